// nng_echo.h: the raw nng request/reply echo server that the benchmarks
// compare aaproxy against (REP socket, contexts and aio, as
// PERF-BASELINES measured it). Shared by bench_transport and bench_proxy.
#ifndef AA_BENCH_NNG_ECHO_H
#define AA_BENCH_NNG_ECHO_H

#include <stdbool.h>

#include <nng/nng.h>

#define NNG_ECHO_CTXS 300 // contexts: enough for 256 outstanding requests

typedef struct nng_echo_ctx {
	nng_ctx ctx;
	nng_aio *aio;
	bool sending;
} nng_echo_ctx;

typedef struct nng_echo_server {
	nng_socket sock;
	nng_echo_ctx ctxs[NNG_ECHO_CTXS];
	int port; // the bound TCP port for tcp:// URLs, else 0
} nng_echo_server;

// nng_echo_start listens on url and echoes every request: 0 or an nng
// error.
int nng_echo_start(nng_echo_server *e, const char *url);

// nng_echo_stop stops the contexts and closes the socket.
void nng_echo_stop(nng_echo_server *e);

#endif // AA_BENCH_NNG_ECHO_H
