// nng_echo.c: see nng_echo.h.
#include <string.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>

#include "nng_echo.h"

static void
echo_cb(void *arg)
{
	nng_echo_ctx *x = arg;
	if (nng_aio_result(x->aio) != 0) {
		if (x->sending) {
			nng_msg_free(nng_aio_get_msg(x->aio));
			x->sending = false;
			nng_ctx_recv(x->ctx, x->aio);
		}
		return;
	}
	if (!x->sending) {
		x->sending = true; // echo the request's body back
		nng_ctx_send(x->ctx, x->aio);
	} else {
		x->sending = false;
		nng_ctx_recv(x->ctx, x->aio);
	}
}

int
nng_echo_start(nng_echo_server *e, const char *url)
{
	nng_listener l;
	int rv;
	memset(e, 0, sizeof(*e));
	// nng 1.5.2 lets a peer claim any size: cap it before listening.
	if ((rv = nng_rep0_open(&e->sock)) != 0 ||
	    (rv = nng_socket_set_size(e->sock, NNG_OPT_RECVMAXSZ, 4096)) !=
	        0 ||
	    (rv = nng_listener_create(&l, e->sock, url)) != 0 ||
	    (rv = nng_listener_start(l, 0)) != 0) {
		return rv;
	}
	if (strncmp(url, "tcp://", 6) == 0) {
		nng_listener_get_int(l, NNG_OPT_TCP_BOUND_PORT, &e->port);
	}
	for (int i = 0; i < NNG_ECHO_CTXS; i++) {
		nng_echo_ctx *x = &e->ctxs[i];
		if ((rv = nng_ctx_open(&x->ctx, e->sock)) != 0 ||
		    (rv = nng_aio_alloc(&x->aio, echo_cb, x)) != 0) {
			return rv;
		}
		nng_ctx_recv(x->ctx, x->aio);
	}
	return 0;
}

void
nng_echo_stop(nng_echo_server *e)
{
	for (int i = 0; i < NNG_ECHO_CTXS; i++) {
		if (e->ctxs[i].aio != NULL) {
			nng_aio_stop(e->ctxs[i].aio);
		}
	}
	nng_close(e->sock);
	for (int i = 0; i < NNG_ECHO_CTXS; i++) {
		nng_aio_free(e->ctxs[i].aio);
		e->ctxs[i].aio = NULL;
	}
}
