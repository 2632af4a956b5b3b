// remote.c: over ipc, the server runs in a second process, the tool's own
// binary started with "--serve URL POOL TIMEOUT", so that the client and
// the server share no thread, no lock and no nng I/O thread, and so that
// killing that process is a real connection loss ("server kill").
//
// Design notes.
//
// Channels. Two pipes, one line per message. The tool sends commands on
// the child's stdin:
//   NAME op id           an op's wire id (sent when the client learns it,
//                        before its Start leaves)
//   IGNORE op            the real op will ignore a cancel
//   HOLD cp op|-         arm a hold at a server checkpoint
//   RELEASE cp op|-      let it go
//   DO seq kind op num hex   a server step (complete, fail, progress,
//                        stop), run on one of the child's actor threads;
//                        answered "DONE seq" or "ERR seq message" when it
//                        returned or its thread is held
//   STATS                answered "STATS n..." (aa_server_stats)
//   END                  stop: answered "END n" (objects left alive)
// and the child sends events on its stdout: READY, ROW col text (a table
// row), LOG event op (the server's log), REACHED cp op|- (a hold was
// reached), and the answers above.
//
// Threads. In the tool, a reader thread applies each event under R.mtx
// (rows are recorded when they arrive, which is the order the tool
// observed); the driver writes commands under R.mtx and waits on R.cv for
// answers, up to the step's timeout. In the child, the main thread reads
// commands and runs them as the tool's driver would; the server's threads
// write events (one lock keeps lines whole).
//
// Races and who wins. A Start may reach the child's server before the
// NAME that names it (two channels): the child's lookup waits for the
// name (run.c, op_by_wire). A hold reached in the child is mirrored by
// REACHED before the tool can release it: release waits for the mirror.
// A child that dies (killed, or crashed) closes its stdout: the reader
// marks it gone and every wait ends.
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "run.h"

// ---- The tool's side ----

static struct {
	FILE *to;
	FILE *from;
	pthread_t reader;
	bool ready, eof, ended, have_stats;
	int seq, done_seq;
	char err[2 * RP_TEXT];
	long long live_delta;
	aa_server_stats stats;
} P;

static void
send_cmd(const char *fmt, ...)
{
	if (P.to == NULL || P.eof) {
		return;
	}
	va_list ap;
	va_start(ap, fmt);
	vfprintf(P.to, fmt, ap);
	va_end(ap);
	fflush(P.to);
}

static const char *
or_dash(const char *s)
{
	return s[0] ? s : "-";
}

static const char *
no_dash(const char *s)
{
	return strcmp(s, "-") == 0 ? "" : s;
}

static void
parse_stats(const char *s)
{
	uint64_t *f[] = {&P.stats.started,          &P.stats.rejected,
	                 &P.stats.cancels_received, &P.stats.cancels_ignored,
	                 &P.stats.completed,        &P.stats.canceled,
	                 &P.stats.failed,           &P.stats.wasted,
	                 &P.stats.orphaned,         &P.stats.replies_sent,
	                 &P.stats.replies_dropped,  &P.stats.progress_sent,
	                 &P.stats.protocol_errors,  &P.stats.pending,
	                 &P.stats.clients};
	char *end = (char *)s;
	for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
		*f[i] = strtoull(end, &end, 10);
	}
	P.have_stats = true;
}

static void
on_event(char *line)
{
	char a[RP_TEXT], b[RP_TEXT];
	int n;
	if (strcmp(line, "READY") == 0) {
		P.ready = true;
	} else if (sscanf(line, "ROW %d %n", &n, &(int){0}) == 1) {
		char *text = strchr(line + 4, ' ');
		if (R.recording && text != NULL) {
			ev_add(n, "%s", text + 1);
		}
	} else if (sscanf(line, "LOG %190s %190s", a, b) == 2) {
		opent *e = op_find(b);
		for (int ev = 0; e != NULL && ev <= AA_SEV_PROTOCOL_ERROR;
		     ev++) {
			if (strcmp(aa_server_event_name((aa_server_event)ev),
			           a) == 0) {
				server_log_event((aa_server_event)ev, e);
			}
		}
	} else if (sscanf(line, "REACHED %190s %190s", a, b) == 2) {
		hold *h = hold_find(a, no_dash(b), true);
		if (h != NULL) {
			h->armed = false;
			h->reached = true;
		}
	} else if (sscanf(line, "DONE %d", &n) == 1) {
		P.done_seq = n;
		P.err[0] = '\0';
	} else if (sscanf(line, "ERR %d", &n) == 1) {
		P.done_seq = n;
		char *msg = strchr(line + 4, ' ');
		snprintf(P.err, sizeof(P.err), "%s", msg ? msg + 1 : "error");
	} else if (strncmp(line, "STATS ", 6) == 0) {
		parse_stats(line + 6);
	} else if (sscanf(line, "END %lld", &P.live_delta) == 1) {
		P.ended = true;
	}
}

static void *
reader_main(void *arg)
{
	char line[2 * RP_TEXT];
	while (fgets(line, sizeof(line), P.from) != NULL) {
		line[strcspn(line, "\n")] = '\0';
		pthread_mutex_lock(&R.mtx);
		on_event(line);
		pthread_cond_broadcast(&R.cv);
		pthread_mutex_unlock(&R.mtx);
	}
	pthread_mutex_lock(&R.mtx);
	P.eof = true;
	pthread_cond_broadcast(&R.cv);
	pthread_mutex_unlock(&R.mtx);
	return NULL;
}

// wait_for waits (R.mtx held) until *flag or the child is gone; false
// after the timeout or when it is gone.
static bool
wait_for(bool *flag)
{
	struct timespec ts;
	deadline_after(&ts, R.sc->timeout_ms);
	while (!*flag && !P.eof) {
		if (!timed_wait(&ts)) {
			return false;
		}
	}
	return *flag;
}

int
remote_start(const rp_scenario *sc)
{
	int cmd[2], ev[2];
	if (pipe(cmd) != 0 || pipe(ev) != 0) {
		return -1;
	}
	char timeout[16];
	snprintf(timeout, sizeof(timeout), "%d", sc->timeout_ms);
	pid_t pid = fork();
	if (pid < 0) {
		return -1;
	}
	if (pid == 0) {
		// Only async-signal-safe calls between fork and exec.
		dup2(cmd[0], STDIN_FILENO);
		dup2(ev[1], STDOUT_FILENO);
		close(cmd[0]);
		close(cmd[1]);
		close(ev[0]);
		close(ev[1]);
		execl("/proc/self/exe", "aa-replay", "--serve", R.url,
		      needs_pool(sc) ? "pool" : "inline", timeout,
		      (char *)NULL);
		_exit(127);
	}
	close(cmd[0]);
	close(ev[1]);
	memset(&P, 0, sizeof(P));
	P.to = fdopen(cmd[1], "w");
	P.from = fdopen(ev[0], "r");
	pthread_mutex_lock(&R.mtx);
	R.server_pid = pid;
	pthread_mutex_unlock(&R.mtx);
	if (P.to == NULL || P.from == NULL ||
	    pthread_create(&P.reader, NULL, reader_main, NULL) != 0) {
		kill(pid, SIGKILL);
		return -1;
	}
	pthread_mutex_lock(&R.mtx);
	bool ok = wait_for(&P.ready);
	pthread_mutex_unlock(&R.mtx);
	return ok ? 0 : -1;
}

void
remote_name(const opent *e)
{
	send_cmd("NAME %s %llu\n", e->name, (unsigned long long)e->wire_id);
}

void
remote_step(const rp_step *st)
{
	if (R.server_dead) {
		setup_error(st, "the server's process was killed");
		return;
	}
	switch (st->kind) {
	case K_HOLD:
		send_cmd("HOLD %s %s\n", st->what, or_dash(st->op));
		return;
	case K_RELEASE:
		send_cmd("RELEASE %s %s\n", st->what, or_dash(st->op));
		return;
	case K_SRV_IGNORE:
		send_cmd("IGNORE %s\n", st->op);
		return;
	case K_SRV_KILL:
		ev_add(COL_SERVER, "the server's process is killed");
		kill(R.server_pid, SIGKILL);
		R.server_dead = true;
		return;
	default:
		break;
	}
	// A step of the real op, or stop: run there, answered when it
	// returned or its thread is held.
	char hex[2 * RP_TEXT + 2] = "-";
	for (size_t i = 0; st->data[i] != '\0'; i++) {
		snprintf(hex + 2 * i, 3, "%02x", (unsigned char)st->data[i]);
	}
	int seq = ++P.seq;
	send_cmd("DO %d %d %s %d %s\n", seq, (int)st->kind, or_dash(st->op),
	         st->num, hex);
	struct timespec ts;
	deadline_after(&ts, R.sc->timeout_ms);
	while (P.done_seq < seq && !P.eof) {
		if (!timed_wait(&ts)) {
			setup_error(st,
			            "the server's process did not answer "
			            "within %d ms",
			            R.sc->timeout_ms);
			return;
		}
	}
	if (P.done_seq < seq) {
		setup_error(st, "the server's process is gone");
	} else if (P.err[0] != '\0') {
		setup_error(st, "%s", P.err);
	}
}

bool
remote_stats(aa_server_stats *ss)
{
	pthread_mutex_lock(&R.mtx);
	memset(ss, 0, sizeof(*ss));
	bool ok = true;
	if (!R.server_dead) {
		P.have_stats = false;
		send_cmd("STATS\n");
		ok = wait_for(&P.have_stats);
		*ss = P.stats;
	}
	pthread_mutex_unlock(&R.mtx);
	return ok;
}

void
remote_stop(void)
{
	pthread_mutex_lock(&R.mtx);
	if (!R.server_dead) {
		send_cmd("END\n");
		if (wait_for(&P.ended)) {
			char obs[32];
			snprintf(obs, sizeof(obs), "%lld", P.live_delta);
			add_check(0,
			          "nothing leaked in the server's process: "
			          "live library objects back to zero",
			          obs, P.live_delta == 0);
		} else {
			add_check(0, "the server's process stopped", "no",
			          false);
			kill(R.server_pid, SIGKILL);
		}
	}
	pthread_mutex_unlock(&R.mtx);
	fclose(P.to);
	P.to = NULL;
	int ws;
	while (waitpid(R.server_pid, &ws, 0) < 0 && errno == EINTR) {
	}
	pthread_join(P.reader, NULL);
	fclose(P.from);
	pthread_mutex_lock(&R.mtx);
	R.server_pid = 0;
	pthread_mutex_unlock(&R.mtx);
}

// ---- The server's process ----

static pthread_mutex_t out_mtx = PTHREAD_MUTEX_INITIALIZER;

void
remote_event(const char *fmt, ...)
{
	pthread_mutex_lock(&out_mtx);
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fflush(stdout);
	pthread_mutex_unlock(&out_mtx);
}

void
remote_row(int col, const char *text)
{
	char one[RP_TEXT];
	snprintf(one, sizeof(one), "%s", text);
	one[strcspn(one, "\n")] = '\0';
	remote_event("ROW %d %s\n", col, one);
}

// serve_do runs one DO command on an actor, as the tool's driver would.
static void
serve_do(char *args)
{
	int seq, kind, num;
	char op[RP_NAME + 8], hex[2 * RP_TEXT + 8];
	if (sscanf(args, "%d %d %39s %d %390s", &seq, &kind, op, &num, hex) !=
	    5) {
		return;
	}
	// The step outlives this call when its thread is held: it is
	// kept until the process ends.
	rp_step *st = calloc(1, sizeof(*st));
	if (st == NULL) {
		remote_event("ERR %d no memory\n", seq);
		return;
	}
	st->kind = (rp_kind)kind;
	st->num = num;
	snprintf(st->op, sizeof(st->op), "%s", no_dash(op));
	snprintf(st->text, sizeof(st->text), "server step");
	for (size_t i = 0;
	     hex[0] != '-' && hex[2 * i] != '\0' && i + 1 < sizeof(st->data);
	     i++) {
		unsigned v = 0;
		sscanf(hex + 2 * i, "%2x", &v);
		st->data[i] = (char)v;
	}
	pthread_mutex_lock(&R.mtx);
	R.res->setup_error = false;
	R.res->error[0] = '\0';
	dispatch(st);
	if (R.res->setup_error) {
		const char *msg = strstr(R.res->error, "': ");
		remote_event("ERR %d %s\n", seq, msg ? msg + 3 : R.res->error);
	} else {
		remote_event("DONE %d\n", seq);
	}
	pthread_mutex_unlock(&R.mtx);
}

static void
serve_line(char *line)
{
	char a[RP_TEXT], b[RP_TEXT];
	unsigned long long id;
	pthread_mutex_lock(&R.mtx);
	if (sscanf(line, "NAME %190s %llu", a, &id) == 2) {
		opent *e = op_get(a);
		if (e != NULL) {
			e->wire_id = id;
		}
	} else if (sscanf(line, "IGNORE %190s", a) == 1) {
		opent *e = op_get(a);
		if (e != NULL) {
			e->ignore_cancel = true;
		}
	} else if (sscanf(line, "HOLD %190s %190s", a, b) == 2) {
		hold_arm(a, no_dash(b));
	} else if (sscanf(line, "RELEASE %190s %190s", a, b) == 2) {
		hold *h = hold_find(a, no_dash(b), false);
		if (h != NULL) {
			h->released = true;
		}
	} else if (strncmp(line, "DO ", 3) == 0) {
		pthread_mutex_unlock(&R.mtx);
		serve_do(line + 3);
		return;
	} else if (strcmp(line, "STATS") == 0) {
		pthread_mutex_unlock(&R.mtx);
		aa_server_stats s;
		aa_server_stats_get(R.srv, &s);
		remote_event("STATS %llu %llu %llu %llu %llu %llu %llu %llu "
		             "%llu %llu %llu %llu %llu %llu %llu\n",
		             (unsigned long long)s.started,
		             (unsigned long long)s.rejected,
		             (unsigned long long)s.cancels_received,
		             (unsigned long long)s.cancels_ignored,
		             (unsigned long long)s.completed,
		             (unsigned long long)s.canceled,
		             (unsigned long long)s.failed,
		             (unsigned long long)s.wasted,
		             (unsigned long long)s.orphaned,
		             (unsigned long long)s.replies_sent,
		             (unsigned long long)s.replies_dropped,
		             (unsigned long long)s.progress_sent,
		             (unsigned long long)s.protocol_errors,
		             (unsigned long long)s.pending,
		             (unsigned long long)s.clients);
		return;
	}
	pthread_cond_broadcast(&R.cv);
	pthread_mutex_unlock(&R.mtx);
}

int
rp_serve(const char *url, bool pool, int timeout_ms)
{
	static rp_scenario sc;
	static rp_result res;
	snprintf(sc.file, sizeof(sc.file), "the server's process");
	sc.timeout_ms = timeout_ms;
	pthread_once(&once, start_once);
	pthread_mutex_lock(&R.mtx);
	R.sc = &sc;
	R.res = &res;
	R.child = true;
	R.recording = true;
	pthread_mutex_unlock(&R.mtx);
	int64_t live_before = aa_live_total();
	aa_checkpoint_set(on_checkpoint, NULL);
	if (server_up(url, pool) != 0) {
		fprintf(stderr, "aa-replay: the server cannot listen on %s\n",
		        url);
		return RP_BAD;
	}
	remote_event("READY\n");
	char line[2 * RP_TEXT + 64];
	bool end = false;
	while (!end && fgets(line, sizeof(line), stdin) != NULL) {
		line[strcspn(line, "\n")] = '\0';
		end = strcmp(line, "END") == 0;
		if (!end) {
			serve_line(line);
		}
	}
	// The end (or the tool went away): let every hold go, wait for the
	// actors, stop the server, count what is left.
	pthread_mutex_lock(&R.mtx);
	R.recording = false;
	R.aborting = true;
	pthread_cond_broadcast(&R.cv);
	pthread_mutex_unlock(&R.mtx);
	actors_idle_or_exit();
	server_down();
	for (int i = 0; i < R.n_ops; i++) {
		if (R.ops[i].real != NULL) {
			aa_op_unref(R.ops[i].real);
		}
	}
	aa_checkpoint_set(NULL, NULL);
	if (end) {
		remote_event("END %lld\n",
		             (long long)(aa_live_total() - live_before));
	}
	return 0;
}
