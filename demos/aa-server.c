// aa-server: the demo server of aaproxy. It serves five methods, each a real
// aa_op on the server, and writes one JSON line per server-side event, so
// that what the server saw can be set beside what aa-client saw (both name
// the op by the client's op id and the connection id). docs/demo.md is the
// guide. It also serves the typed service aa.demo.Demo (demos/demo.proto)
// with the same behaviour.
//
// Files: this one reads the command line, prepares ipc:// addresses and
// runs the server (main); aa-server-log.c writes the JSON log,
// aa-server-methods.c holds the byte methods (their threads, references
// and races are in its notes), aa-server-typed.c the typed service;
// aa-server.h is what they share.
//
// Design notes.
//
// Methods run on a connection's receive thread: they start work and
// return. The work runs elsewhere: "sleep" and "count" on a timer queue
// (G.timers), "spin" on a thread pool (G.pool); main makes both before the
// server and frees them after it.
//
// Signals: SIGINT and SIGTERM are blocked before any thread starts, so
// every library thread inherits the mask, and main waits for them with
// sigwait. Shutdown: aa_server_free (says Goodbye, cancels every real op
// and waits for all of them to end), then the pool and the timer queue.
#define _POSIX_C_SOURCE 200809L

#include <aa/aa.h>
#include <aa/service.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "aa-server.h"

#define MAX_LISTEN 16

server_ctx G;

// ---- ipc:// addresses ----

// ipc_path returns the file of an ipc:// URL, or NULL.
static const char *
ipc_path(const char *url)
{
	return strncmp(url, "ipc://", 6) == 0 ? url + 6 : NULL;
}

// ipc_prepare removes a stale socket file at path, only if nothing
// answers on it; 0, or -1 with a message on stderr.
static int
ipc_prepare(const char *url, const char *path)
{
	struct stat st;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};

	if (lstat(path, &st) != 0) {
		return 0; // nothing there
	}
	if (!S_ISSOCK(st.st_mode)) {
		fprintf(stderr, "aa-server: %s exists and is not a socket\n",
		        path);
		return -1;
	}
	if (strlen(path) >= sizeof(sa.sun_path)) {
		fprintf(stderr, "aa-server: socket path too long: %s\n", path);
		return -1;
	}
	strcpy(sa.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0) {
		perror("aa-server: socket");
		return -1;
	}
	int rv = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
	int err = errno;
	close(fd);
	if (rv == 0) {
		fprintf(stderr,
		        "aa-server: another server is listening on %s\n", url);
		return -1;
	}
	if (err != ECONNREFUSED) {
		fprintf(stderr, "aa-server: cannot probe %s: %s\n", path,
		        strerror(err));
		return -1;
	}
	if (unlink(path) != 0) {
		fprintf(stderr, "aa-server: cannot remove stale %s: %s\n",
		        path, strerror(errno));
		return -1;
	}
	return 0;
}

// ---- Options ----

typedef struct options {
	const char *listen[MAX_LISTEN];
	int n_listen;
	const char *log;
	aa_server_opts so;
	int threads;
} options;

static void
usage(FILE *f)
{
	fprintf(f,
	        "usage: aa-server [options]\n"
	        "Serves echo, sleep MS, spin MS, count N and fail CODE.\n"
	        "  --listen URL        listen on URL (repeatable; default "
	        "aa_default_url():\n"
	        "                      %s)\n"
	        "  --log FILE          JSON event log, one object a line "
	        "(appended;\n"
	        "                      '-' = stdout; default stderr)\n"
	        "  --max-pending N     pending ops per client (default "
	        "1024)\n"
	        "  --max-msg BYTES     largest message (default 1 MiB)\n"
	        "  --heartbeat-ms N    heartbeat interval (default 1000; "
	        "-1 = off)\n"
	        "  --dead-after-ms N   silence that ends a client (default "
	        "3 heartbeats)\n"
	        "  --threads N         worker threads for spin (default 4)\n"
	        "  --reply-delay-ms N  hold every Complete N ms before "
	        "sending it, as a\n"
	        "                      slow link would (a demo knob: it "
	        "makes a Cancel\n"
	        "                      and a Complete cross; default 0)\n"
	        "  --tls-cert FILE     certificate for tls+tcp:// (PEM)\n"
	        "  --tls-key FILE      its key (PEM)\n"
	        "  --tls-ca FILE       ask clients for certificates signed "
	        "by this CA\n"
	        "  --help              this text\n"
	        "SIGINT or SIGTERM shuts it down cleanly (exit 0).\n",
	        aa_default_url() != NULL ? aa_default_url() : "(none)");
}

// parse_int reads a decimal int in [lo, hi]; false when it is not one.
static bool
parse_int(const char *s, long lo, long hi, long *v)
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

// parse_options fills o; returns -1 to exit 0 (--help), 2 for a usage
// error, 0 to go on.
static int
parse_options(int argc, char **argv, options *o)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *val = NULL;
		long v;
		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return -1;
		}
		if (strncmp(a, "--", 2) != 0) {
			fprintf(stderr, "aa-server: unexpected argument %s\n",
			        a);
			return 2;
		}
		if (i + 1 >= argc) {
			fprintf(stderr, "aa-server: %s needs a value\n", a);
			return 2;
		}
		val = argv[++i];
		if (strcmp(a, "--listen") == 0) {
			if (o->n_listen == MAX_LISTEN) {
				fprintf(stderr, "aa-server: too many "
				                "--listen\n");
				return 2;
			}
			o->listen[o->n_listen++] = val;
		} else if (strcmp(a, "--log") == 0) {
			o->log = val;
		} else if (strcmp(a, "--max-pending") == 0 &&
		           parse_int(val, 1, INT32_MAX, &v)) {
			o->so.max_pending = (uint32_t)v;
		} else if (strcmp(a, "--max-msg") == 0 &&
		           parse_int(val, 512, INT32_MAX, &v)) {
			o->so.max_msg_size = (size_t)v;
		} else if (strcmp(a, "--heartbeat-ms") == 0 &&
		           parse_int(val, -1, INT32_MAX, &v)) {
			o->so.heartbeat_ms = (int)v;
		} else if (strcmp(a, "--dead-after-ms") == 0 &&
		           parse_int(val, -1, INT32_MAX, &v)) {
			o->so.dead_after_ms = (int)v;
		} else if (strcmp(a, "--threads") == 0 &&
		           parse_int(val, 1, 256, &v)) {
			o->threads = (int)v;
		} else if (strcmp(a, "--reply-delay-ms") == 0 &&
		           parse_int(val, 0, 600000, &v)) {
			o->so.reply_delay_ms = (int)v;
		} else if (strcmp(a, "--tls-cert") == 0) {
			o->so.tls_cert_file = val;
		} else if (strcmp(a, "--tls-key") == 0) {
			o->so.tls_key_file = val;
		} else if (strcmp(a, "--tls-ca") == 0) {
			o->so.tls_ca_file = val;
		} else {
			fprintf(stderr, "aa-server: bad option %s %s\n", a,
			        val);
			return 2;
		}
	}
	if ((o->so.tls_cert_file == NULL) != (o->so.tls_key_file == NULL)) {
		fprintf(stderr, "aa-server: --tls-cert and --tls-key go "
		                "together\n");
		return 2;
	}
	return 0;
}

// ---- main ----

static const aa_method_def methods[] = {
    {.name = "echo", .start = m_echo, .cancel_types = AA_CANCEL_ALL},
    {.name = "sleep", .start = m_sleep, .cancel_types = AA_CANCEL_ALL},
    {.name = "spin",
     .start = m_spin,
     .compensate = spin_compensate,
     .cancel_types = AA_CANCEL_TERMINAL},
    {.name = "count", .start = m_count, .cancel_types = AA_CANCEL_ALL},
    {.name = "fail", .start = m_fail, .cancel_types = AA_CANCEL_ALL},
};

// serve listens on every URL and waits for SIGINT or SIGTERM; the
// signals are blocked already. 0, or 1 when it could not listen.
static int
serve(aa_server *srv, const options *o, const sigset_t *sigs)
{
	char line[1024] = "";
	size_t n = 0;

	for (int i = 0; i < o->n_listen; i++) {
		const char *url = o->listen[i];
		const char *path = ipc_path(url);
		int rv;
		if (path != NULL && ipc_prepare(url, path) != 0) {
			return 1;
		}
		if ((rv = aa_server_listen(srv, url)) != 0) {
			fprintf(stderr, "aa-server: cannot listen on %s: %s\n",
			        url, aa_strerror(rv));
			return 1;
		}
		if (path != NULL && chmod(path, 0600) != 0) {
			fprintf(stderr, "aa-server: chmod %s: %s\n", path,
			        strerror(errno));
			return 1;
		}
		int w = snprintf(line + n, sizeof(line) - n, "%s%s",
		                 i > 0 ? " " : "", url);
		n += w > 0 && (size_t)w < sizeof(line) - n ? (size_t)w : 0;
		if (strncmp(url, "tcp://", 6) == 0 ||
		    strncmp(url, "tls+tcp://", 10) == 0) {
			w = snprintf(line + n, sizeof(line) - n, " (port %d)",
			             aa_server_port(srv));
			n += w > 0 && (size_t)w < sizeof(line) - n ? (size_t)w
			                                           : 0;
		}
	}
	fprintf(stderr, "aa-server: listening on %s (pid %d)\n", line,
	        (int)getpid());
	fflush(stderr);

	int sig = 0;
	while (sigwait(sigs, &sig) != 0) {
	}
	return 0;
}

int
main(int argc, char **argv)
{
	options o = {.threads = 4};
	sigset_t sigs;
	aa_server *srv = NULL;
	int rv;

	// Block the shutdown signals before any thread exists: every
	// library thread inherits the mask and only sigwait sees them.
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	if ((rv = parse_options(argc, argv, &o)) != 0) {
		return rv < 0 ? 0 : rv;
	}
	if (o.n_listen == 0) {
		if ((o.listen[0] = aa_default_url()) == NULL) {
			fprintf(stderr, "aa-server: no safe default address; "
			                "use --listen URL\n");
			return 1;
		}
		o.n_listen = 1;
	}
	if (o.log == NULL) {
		G.log = stderr;
	} else if (strcmp(o.log, "-") == 0) {
		G.log = stdout;
	} else if ((G.log = fopen(o.log, "a")) == NULL) {
		fprintf(stderr, "aa-server: cannot open %s: %s\n", o.log,
		        strerror(errno));
		return 1;
	}
	atomic_init(&G.stopping, false);
	o.so.log = on_server_event;

	rv = aa_timer_queue_alloc(&G.timers);
	if (rv == 0) {
		rv = aa_pool_alloc(&G.pool, o.threads);
	}
	if (rv == 0) {
		rv = aa_server_alloc(&srv, &o.so);
	}
	for (size_t i = 0; rv == 0 && i < sizeof(methods) / sizeof(methods[0]);
	     i++) {
		rv = aa_server_register(srv, &methods[i]);
	}
	// The typed service aa.demo.Demo beside the byte methods.
	aa_service *demo_svc = NULL;
	if (rv == 0) {
		rv = register_demo_service(&demo_svc, srv);
	}
	int status = 1;
	if (rv != 0) {
		fprintf(stderr, "aa-server: cannot start: %s\n",
		        aa_strerror(rv));
	} else {
		status = serve(srv, &o, &sigs);
	}

	// Shut down: spin work stops early, every real op is cancelled and
	// waited for, then the pool and the timers go.
	atomic_store(&G.stopping, true);
	if (srv != NULL) {
		aa_server_stats st;
		aa_server_stop(srv);
		aa_server_stats_get(srv, &st);
		aa_server_free(srv);
		aa_service_free(demo_svc); // after the server, which used it
		if (status == 0) {
			fprintf(
			    stderr,
			    "aa-server: stopped; ops started %llu, completed "
			    "%llu, canceled %llu, failed %llu, rejected "
			    "%llu, wasted %llu\n",
			    (unsigned long long)st.started,
			    (unsigned long long)st.completed,
			    (unsigned long long)st.canceled,
			    (unsigned long long)st.failed,
			    (unsigned long long)st.rejected,
			    (unsigned long long)st.wasted);
		}
	}
	if (G.pool != NULL) {
		aa_executor_free(G.pool);
	}
	if (G.timers != NULL) {
		aa_timer_queue_free(G.timers);
	}
	for (int i = 0; status == 0 && i < o.n_listen; i++) {
		const char *path = ipc_path(o.listen[i]);
		if (path != NULL) {
			unlink(path);
		}
	}
	if (G.log != stderr && G.log != stdout) {
		fclose(G.log);
	}
	return status;
}
