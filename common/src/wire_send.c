// wire_send.c: encode a wire message straight into a connection's send
// buffer (no intermediate copy), for the client and server layers.
#include "wire_send.h"
#include "transport.h"

typedef struct encode_ctx {
	const aai_wire_msg *m;
	size_t len;
} encode_ctx;

static void
encode_into(void *arg, uint8_t *dst)
{
	encode_ctx *e = arg;
	size_t n;
	// The size was computed from the same message: this cannot fail.
	int rv = aai_wire_encode(&n, dst, e->len, e->m, 0);
	AAI_ASSERT(rv == 0 && n == e->len);
}

int
aai_wire_send(aai_conn *c, const aai_wire_msg *m, size_t limit)
{
	encode_ctx e = {.m = m};
	int rv;
	if ((rv = aai_wire_size(&e.len, m)) != 0) {
		return rv;
	}
	if (limit != 0 && e.len > limit) {
		return AA_EMSGSIZE;
	}
	return aai_conn_send_encode(c, e.len, encode_into, &e);
}
