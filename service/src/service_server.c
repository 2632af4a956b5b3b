// service_server.c: the server side of typed services (aa/service.h).
//
// Design notes.
//
// A typed method is registered as an ordinary byte method whose start
// function is a shim: it decodes the Start's payload as the method's
// input type (with the server's allocator, the recycler it passes in
// assoc), calls the user's handler with the message, and frees the
// message when the handler returns. A payload that does not decode never
// reaches the handler: the shim refuses the Start with AA_EINVAL and the
// text "payload is not a valid <type>" (aa_server_reject_reason), as a
// byte method refuses a bad payload (docs/protocol.md § 5.2): the client
// reads REJECTED, settlement never_started, and that text.
//
// State: an aa_service holds, per method, what the shim needs (the method
// descriptor, the handler and its argument, the wire name). It is written
// once, before registration, and only read afterwards, from any receive
// thread: no lock. The server holds pointers into it, so it must outlive
// the server: the user frees it after aa_server_free. There is no race
// of its own here; cancellation, completion and replies are the server
// layer's (server.c) and the op's.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aai.h"
#include "svc.h"

#define NAME_MAX_WIRE 256 // 255 bytes and the NUL

typedef struct svc_method {
	const ProtobufCMethodDescriptor *md;
	aa_service_start_fn start;
	void *arg;
	char name[NAME_MAX_WIRE];
} svc_method;

struct aa_service {
	size_t n;
	svc_method methods[];
};

// refuse rejects a Start whose payload does not decode.
static int
refuse(const svc_method *m)
{
	char why[NAME_MAX_WIRE + 48];
	snprintf(why, sizeof(why), "payload is not a valid %s",
	         m->md->input->name);
	aa_server_reject_reason(why);
	return AA_EINVAL;
}

static int
shim_start(aa_op **opp, void *arg, const aa_call_info *call,
           const void *payload, size_t len, const aa_assoc *assoc)
{
	const svc_method *m = arg;
	ProtobufCAllocator pa;
	aai_svc_allocator(&pa, assoc != NULL ? assoc->allocator : NULL);
	ProtobufCMessage *in =
	    protobuf_c_message_unpack(m->md->input, &pa, len, payload);
	if (in == NULL) {
		return refuse(m);
	}
	int rv = m->start(opp, m->arg, call, in, assoc);
	protobuf_c_message_free_unpacked(in, &pa);
	return rv;
}

// check_defs validates every definition before anything is registered.
static int
check_defs(const ProtobufCServiceDescriptor *desc,
           const aa_service_method *methods, size_t n)
{
	if (!aai_svc_service_ok(desc) || (n > 0 && methods == NULL)) {
		return AA_EINVAL;
	}
	for (size_t i = 0; i < n; i++) {
		const aa_service_method *d = &methods[i];
		const ProtobufCMethodDescriptor *md;
		char name[NAME_MAX_WIRE];
		if (d->name == NULL || d->start == NULL ||
		    (d->cancel_types & ~(unsigned)AA_CANCEL_ALL) != 0 ||
		    (md = aai_svc_find(desc, d->name)) == NULL ||
		    !aai_svc_message_ok(md->input) ||
		    !aai_svc_message_ok(md->output) ||
		    aa_service_method_name(name, sizeof(name), desc,
		                           d->name) != 0) {
			return AA_EINVAL;
		}
		for (size_t j = 0; j < i; j++) {
			if (strcmp(methods[j].name, d->name) == 0) {
				return AA_EINVAL; // given twice
			}
		}
	}
	return 0;
}

int
aa_service_register(aa_service **svp, aa_server *s,
                    const ProtobufCServiceDescriptor *desc,
                    const aa_service_method *methods, size_t n)
{
	int rv;
	if (svp == NULL || s == NULL) {
		return AA_EINVAL;
	}
	if ((rv = check_defs(desc, methods, n)) != 0) {
		return rv;
	}
	aa_service *sv = aai_zalloc(sizeof(*sv) + n * sizeof(svc_method));
	if (sv == NULL) {
		return AA_ENOMEM;
	}
	aai_live_inc(AA_LIVE_SERVER);
	sv->n = n;
	for (size_t i = 0; i < n; i++) {
		svc_method *m = &sv->methods[i];
		m->md = aai_svc_find(desc, methods[i].name);
		m->start = methods[i].start;
		m->arg = methods[i].arg;
		(void)aa_service_method_name(m->name, sizeof(m->name), desc,
		                             methods[i].name);
	}
	for (size_t i = 0; i < n; i++) {
		svc_method *m = &sv->methods[i];
		aa_method_def def = {
		    .name = m->name,
		    .start = shim_start,
		    .compensate = methods[i].compensate,
		    .arg = m,
		    .cancel_types = methods[i].cancel_types,
		    .type_fingerprint = aa_service_fingerprint(m->md),
		};
		if ((rv = aa_server_register(s, &def)) != 0) {
			if (i == 0) {
				aa_service_free(sv);
				return rv;
			}
			// The server points into sv already: it must live
			// as long as the server, error or not.
			break;
		}
	}
	*svp = sv;
	return rv;
}

void
aa_service_free(aa_service *sv)
{
	if (sv != NULL) {
		aai_free(sv);
		aai_live_dec(AA_LIVE_SERVER);
	}
}

int
aa_service_complete(aa_op *op, const ProtobufCMessage *output)
{
	if (op == NULL || output == NULL ||
	    !aai_svc_message_ok(output->descriptor)) {
		return AA_EINVAL;
	}
	size_t len = protobuf_c_message_get_packed_size(output);
	uint8_t *buf = aai_alloc(len > 0 ? len : 1);
	if (buf == NULL) {
		return AA_ENOMEM;
	}
	protobuf_c_message_pack(output, buf);
	// The op owns buf now, also when the finish is absorbed.
	return aa_op_complete(op, buf, len, aai_free);
}
