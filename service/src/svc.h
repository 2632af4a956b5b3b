// svc.h: what the files of the service layer share. Internal.
#ifndef AA_SVC_H
#define AA_SVC_H

#include <stdbool.h>

#include <aa/service.h>

// aai_svc_allocator fills *pa, a protobuf-c allocator over a (NULL: the
// default allocator). protobuf-c frees without a size and aa_allocator
// needs one, so every block carries its size in a 16-byte header.
void aai_svc_allocator(ProtobufCAllocator *pa, const aa_allocator *a);

// aai_svc_fingerprint_cached returns aa_service_fingerprint(m), computed
// once per method and process.
uint64_t aai_svc_fingerprint_cached(const ProtobufCMethodDescriptor *m);

// aai_svc_service_ok and aai_svc_message_ok check a descriptor's magic.
bool aai_svc_service_ok(const ProtobufCServiceDescriptor *d);
bool aai_svc_message_ok(const ProtobufCMessageDescriptor *d);

// aai_svc_find returns the method of d called name, or NULL.
const ProtobufCMethodDescriptor *
aai_svc_find(const ProtobufCServiceDescriptor *d, const char *name);

#endif // AA_SVC_H
