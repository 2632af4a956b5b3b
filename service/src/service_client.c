// service_client.c: the client side of typed services (aa/service.h).
//
// Design notes.
//
// A typed call is a byte call (aa_client_call) of the method's full name
// with the packed input; the op it returns is the client layer's fake op,
// so the timelines, settlement, deadlines and progress are exactly those
// of a byte call. Before it, two checks that need nothing from the wire:
// the input is of the method's input type, and the fingerprint the server
// declared for the method in its Hello equals the one computed here from
// the client's own descriptors (0 from the server: an untyped method, not
// checked). The table read is a snapshot under the client's lock; a
// reconnect to a server with other types between the check and the send
// is caught by the server, which refuses a payload that does not decode.
//
// No state of its own, no lock, no race beyond the client layer's.
#include <string.h>

#include "aai.h"
#include "svc.h"

#define NAME_MAX_WIRE 256
#define STACK_PAYLOAD 512 // inputs up to this size are packed on the stack

// server_has says whether the server serves md (full name in name) with
// the same types: 0, AA_ENOENT or AA_ENOTSUP.
static int
server_has(aa_client *c, const char *name, const ProtobufCMethodDescriptor *md)
{
	uint64_t fp = 0;
	int rv = aa_client_method_fingerprint(c, name, &fp);
	if (rv != 0) {
		return rv;
	}
	if (fp != 0 && fp != aai_svc_fingerprint_cached(md)) {
		return AA_ENOTSUP;
	}
	return 0;
}

int
aa_service_call(aa_op **opp, aa_client *c,
                const ProtobufCServiceDescriptor *desc, const char *method,
                const ProtobufCMessage *input, const aa_call_opts *co,
                const aa_assoc *assoc)
{
	const ProtobufCMethodDescriptor *md;
	char name[NAME_MAX_WIRE];
	uint8_t stack[STACK_PAYLOAD];
	int rv;

	if (opp == NULL || c == NULL || method == NULL || input == NULL ||
	    !aai_svc_service_ok(desc)) {
		return AA_EINVAL;
	}
	if ((md = aai_svc_find(desc, method)) == NULL) {
		return AA_ENOENT;
	}
	if (input->descriptor != md->input) {
		return AA_EINVAL; // another type than the method takes
	}
	if ((rv = aa_service_method_name(name, sizeof(name), desc, method)) !=
	    0) {
		return rv;
	}
	if ((rv = server_has(c, name, md)) != 0) {
		return rv;
	}
	size_t len = protobuf_c_message_get_packed_size(input);
	uint8_t *buf = stack;
	if (len > sizeof(stack) && (buf = aai_alloc(len)) == NULL) {
		return AA_ENOMEM;
	}
	protobuf_c_message_pack(input, buf);
	// The client layer copies the payload: buf is ours again at once.
	rv = aa_client_call(opp, c, name, buf, len, co, assoc);
	if (buf != stack) {
		aai_free(buf);
	}
	return rv;
}

int
aa_service_check(aa_client *c, const ProtobufCServiceDescriptor *desc,
                 const char **bad)
{
	char name[NAME_MAX_WIRE];
	if (c == NULL || !aai_svc_service_ok(desc)) {
		return AA_EINVAL;
	}
	for (unsigned i = 0; i < desc->n_methods; i++) {
		const ProtobufCMethodDescriptor *md = &desc->methods[i];
		int rv =
		    aa_service_method_name(name, sizeof(name), desc, md->name);
		if (rv == 0) {
			rv = server_has(c, name, md);
		}
		if (rv != 0) {
			if (bad != NULL) {
				*bad = md->name;
			}
			return rv;
		}
	}
	return 0;
}

int
aa_service_result(ProtobufCMessage **outp, const aa_op *op,
                  const ProtobufCMessageDescriptor *type)
{
	const void *data;
	size_t len;
	ProtobufCAllocator pa;
	int rv;

	if (outp == NULL || op == NULL || !aai_svc_message_ok(type)) {
		return AA_EINVAL;
	}
	if ((rv = aa_op_result(op, &data, &len)) != 0) {
		return rv;
	}
	aai_svc_allocator(&pa, aa_op_assoc(op)->allocator);
	ProtobufCMessage *m = protobuf_c_message_unpack(type, &pa, len, data);
	if (m == NULL) {
		return AA_EPROTO; // not an encoding of type
	}
	*outp = m;
	return 0;
}

void
aa_service_result_free(const aa_op *op, ProtobufCMessage *msg)
{
	ProtobufCAllocator pa;
	if (op == NULL || msg == NULL) {
		return;
	}
	aai_svc_allocator(&pa, aa_op_assoc(op)->allocator);
	protobuf_c_message_free_unpacked(msg, &pa);
}
