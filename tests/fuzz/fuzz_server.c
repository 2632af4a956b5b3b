// fuzz_server.c: a libFuzzer target for a server connection: every input is
// a raw byte stream sent to an aa_server over an inproc:// connection, so
// it goes through the server's framing (length prefixes, partial frames,
// oversized headers), decoding and dispatch (handshake, Start, Cancel,
// duplicates, limits, deadlines, progress, Goodbye), exactly as bytes from a
// socket would. Then the connection closes; the server must clean up every
// session and real op of it (checked by the live-object counters) within a
// bounded time. Any crash, sanitizer report, leak or hang is a finding.
//
// Build: see docs/building.md ("fuzz" phase): the libraries are compiled
// with -fsanitize=fuzzer-no-link and ASan+UBSan, this target links
// libFuzzer. Run: ./tests/fuzz/fuzz_server NEW_DIR tests/fuzz/corpus/server
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <aa/aa.h>
#include <aa/server.h>

#include "../methods.h"
#include "transport.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define URL         "inproc://aa-fuzz-server"
#define SETTLE_SECS 10 // a session still alive after this is a hang

static aa_server *srv;
static int64_t live_idle; // live objects with no connection open

static void
setup(void)
{
	aa_server_opts so = {.max_pending = 8, .max_msg_size = 65536};
	aa_method_def defs[] = {
	    {.name = "echo",
	     .start = method_echo,
	     .cancel_types = AA_CANCEL_ALL},
	    {.name = "fail",
	     .start = method_fail,
	     .cancel_types = AA_CANCEL_TERMINAL},
	    {.name = "hold",
	     .start = method_hold,
	     .cancel_types = AA_CANCEL_ALL},
	};
	if (aa_server_alloc(&srv, &so) != 0) {
		abort();
	}
	for (size_t i = 0; i < sizeof(defs) / sizeof(defs[0]); i++) {
		if (aa_server_register(srv, &defs[i]) != 0) {
			abort();
		}
	}
	if (aa_server_listen(srv, URL) != 0) {
		abort();
	}
	live_idle = aa_live_total();
}

static void
on_frame(void *arg, aai_conn *c, const uint8_t *data, size_t len)
{
	(void)arg;
	(void)c;
	(void)data;
	(void)len;
}

static void
on_down(void *arg, aai_conn *c, int err)
{
	(void)arg;
	(void)c;
	(void)err;
}

// settle waits until the server has ended the connection's session and
// every real op of it, or aborts: a session that outlives its connection
// is a finding too.
static void
settle(void)
{
	struct timespec t0, now, nap = {0, 100000};
	clock_gettime(CLOCK_MONOTONIC, &t0);
	while (aa_live_total() != live_idle) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - t0.tv_sec > SETTLE_SECS) {
			fprintf(stderr,
			        "fuzz_server: %lld objects still alive "
			        "after the connection ended\n",
			        (long long)(aa_live_total() - live_idle));
			abort();
		}
		nanosleep(&nap, NULL);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	aai_tp_opts o = {.max_frame = 1 << 20};
	aai_conn_cbs cbs = {.frame = on_frame, .down = on_down};
	aai_conn *c;

	if (srv == NULL) {
		setup();
	}
	if (aai_dial(&c, URL, &o) != 0) {
		abort();
	}
	aai_conn_start(c, &cbs, NULL);
	// Two writes split inside the stream, so that frames also arrive in
	// pieces.
	size_t cut = size > 0 ? data[0] % (size + 1) : 0;
	if (aai_conn_send_raw(c, data, cut) == 0) {
		(void)aai_conn_send_raw(c, data + cut, size - cut);
	}
	// What was sent before the close is still delivered to the server,
	// which then sees the connection end.
	aai_conn_free(c);
	settle();
	return 0;
}
