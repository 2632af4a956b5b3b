// aa/service.h: typed services. A protobuf-c service (the
// ProtobufCServiceDescriptor that protoc-c generates from a .proto file)
// registers on an aa_server with one handler per method, and is called
// from an aa_client with typed messages. Everything of a byte call holds
// for a typed call: the op is the client layer's fake op, with its three
// cancellation timelines, settlement, deadlines, progress and the
// server's compensation hook. docs/services.md is the guide.
//
// On the wire a typed method is an ordinary method named by its full name,
// "package.Service/Method", whose payloads are the protobuf encodings of
// its input and output messages. The server's Hello carries, per method, a
// fingerprint of those two message types; a client built from different
// message definitions is refused locally (AA_ENOTSUP) before anything is
// sent. A Start whose payload does not decode as the input type is
// rejected (AA_EINVAL, "payload is not a valid <type>") and never reaches
// the handler.
//
// This is the one public header of aaproxy that names protobuf-c types:
// the service API is protobuf-c's own descriptors and messages, so it
// includes <protobuf-c/protobuf-c.h>. <aa/aa.h> does not include it.
//
// Ownership: messages a function here returns belong to the caller and are
// freed with the function named beside it. Messages passed in are only read
// during the call.
#ifndef AA_SERVICE_H
#define AA_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include <aa/client.h>
#include <aa/errors.h>
#include <aa/op.h>
#include <aa/server.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---- Server side ----

// A typed method starts the real operation, as an aa_method_fn does, but
// receives its input decoded. It returns 0 and *opp, a started op whose
// reference now belongs to the server, or an error (a rejection). The op
// ends with aa_service_complete (a typed result), aa_op_fail (a library
// or application error) or aa_op_canceled. input is valid only during
// the call (copy what the work needs later); it is never NULL.
typedef int (*aa_service_start_fn)(aa_op **opp, void *arg,
                                   const aa_call_info *call,
                                   const ProtobufCMessage *input,
                                   const aa_assoc *assoc);

// One method of a service: its name in the .proto file ("Echo") and what
// aa_method_def holds for a byte method.
typedef struct aa_service_method {
	const char *name;
	aa_service_start_fn start;
	aa_compensate_fn compensate; // may be NULL
	void *arg;
	unsigned cancel_types; // the aa_cancel_type mask it honours
} aa_service_method;

typedef struct aa_service aa_service;

// aa_service_register registers the n methods given for service desc on
// s, each as "package.Service/Method" with the fingerprint of its types.
// A method of the service that is not given is not served (calls to it
// fail AA_ENOENT). AA_EINVAL: a bad descriptor or definition, a name that
// is not a method of desc, or one given twice (nothing is registered);
// aa_server_register's errors otherwise (AA_EEXIST, AA_ESTATE after the
// first listen, AA_ENOMEM). *svp holds what the handlers need: free it
// with aa_service_free after the server is freed. When the server refuses
// a method after it took earlier ones, those stay registered and *svp is
// set all the same (the server points into it).
int aa_service_register(aa_service **svp, aa_server *s,
                        const ProtobufCServiceDescriptor *desc,
                        const aa_service_method *methods, size_t n);

// aa_service_free releases what aa_service_register kept. Call it after
// aa_server_free of the server the service was registered on.
void aa_service_free(aa_service *sv);

// aa_service_complete finishes op COMPLETED with output, packed (the op
// keeps the encoding; output may be freed at once). AA_EINVAL for a
// NULL or non-message output, AA_ENOMEM, or aa_op_complete's AA_EALREADY.
int aa_service_complete(aa_op *op, const ProtobufCMessage *output);

// ---- Client side ----

// aa_service_call starts method (its name in the .proto file, "Echo") of
// service desc with input, which must be of the method's input type, and
// returns the op at once, as aa_client_call does. Refused before anything
// is sent: AA_EINVAL (bad arguments, input of another type), AA_ENOENT
// (the method is not in desc, or the server does not serve it),
// AA_ENOTSUP (the server's method has other message types: a different
// .proto), AA_ESTATE (in a forked child: open a client of its own), and
// aa_client_call's errors.
int aa_service_call(aa_op **opp, aa_client *c,
                    const ProtobufCServiceDescriptor *desc, const char *method,
                    const ProtobufCMessage *input, const aa_call_opts *co,
                    const aa_assoc *assoc);

// aa_service_check checks every method of desc against the server's
// method table: 0 when the server serves each with the same types,
// AA_ENOENT for one it does not serve, AA_ENOTSUP for one with other
// types; *bad (may be NULL) then names that method ("Echo").
int aa_service_check(aa_client *c, const ProtobufCServiceDescriptor *desc,
                     const char **bad);

// aa_service_result unpacks the result of a COMPLETED op as a message of
// type (the method's output type) with the op's allocator. aa_op_result's
// errors (AA_ECANCELED, the op's error, AA_ESTATE); AA_EINVAL for a bad
// type; AA_EPROTO when the result does not decode as type. Free the
// message with aa_service_result_free while the op is still referenced.
int aa_service_result(ProtobufCMessage **outp, const aa_op *op,
                      const ProtobufCMessageDescriptor *type);

// aa_service_result_free frees a message from aa_service_result of op.
void aa_service_result_free(const aa_op *op, ProtobufCMessage *msg);

// ---- Descriptors, names, JSON ----

// aa_service_fingerprint returns the type fingerprint of method m: a
// 64-bit hash of its input and output message types (docs/services.md
// says exactly what it covers); never 0.
uint64_t aa_service_fingerprint(const ProtobufCMethodDescriptor *m);

// aa_service_method_name writes "package.Service/Method" for method of
// desc into buf[0..cap): 0, AA_ENOENT (no such method), AA_EINVAL (it
// does not fit, or is longer than a wire method name may be).
int aa_service_method_name(char *buf, size_t cap,
                           const ProtobufCServiceDescriptor *desc,
                           const char *method);

// aa_service_from_json parses json[0..len), a JSON object, into a new
// message of type. Fields are named as in the .proto file or in
// lowerCamelCase; 64-bit integers may be numbers or strings; enums names
// or numbers; bytes base64. On error (AA_EINVAL, AA_ENOMEM) err[0..errlen)
// says where and why. Free the message with aa_service_message_free.
int aa_service_from_json(ProtobufCMessage **outp,
                         const ProtobufCMessageDescriptor *type,
                         const char *json, size_t len, char *err,
                         size_t errlen);

// aa_service_message_free frees a message from aa_service_from_json.
void aa_service_message_free(ProtobufCMessage *msg);

// aa_service_to_json writes msg as one line of JSON into a new
// NUL-terminated string *outp (free it with free()), its length in *lenp
// (may be NULL). Fields with the .proto file's names; proto3 fields at
// their defaults are left out. 0, AA_EINVAL or AA_ENOMEM.
int aa_service_to_json(char **outp, size_t *lenp, const ProtobufCMessage *msg);

#ifdef __cplusplus
}
#endif
#endif // AA_SERVICE_H
