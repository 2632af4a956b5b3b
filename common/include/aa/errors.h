// aa/errors.h: error codes, counters of live objects and library-wide
// statistics. Every function of aaproxy that can fail returns 0 or one of
// the positive AA_E* codes below; aa_strerror() explains each of them.
#ifndef AA_ERRORS_H
#define AA_ERRORS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum aa_errno {
	AA_ECANCELED = 1,   // the operation was cancelled
	AA_EALREADY = 2,    // already final / already done: nothing to do
	AA_ENOTSUP = 3,     // not supported (e.g. a cancellation type)
	AA_ESTATE = 4,      // illegal call in the object's current state
	AA_EINVAL = 5,      // invalid argument
	AA_ENOMEM = 6,      // out of memory
	AA_ECLOSED = 7,     // object closed
	AA_EBUSY = 8,       // resource busy (e.g. a slot already connected)
	AA_ETIMEDOUT = 9,   // deadline passed
	AA_ECONNLOST = 10,  // connection to the peer lost
	AA_EUNAVAIL = 11,   // peer shut down or unavailable
	AA_EPROTO = 12,     // protocol error: malformed or unexpected message
	AA_EMSGSIZE = 13,   // message larger than the configured limit
	AA_ENOENT = 14,     // unknown method, id or name
	AA_EDEADLK = 15,    // call would deadlock (e.g. stop from a callback)
	AA_ELIMIT = 16,     // configured limit reached (e.g. pending ops)
	AA_EEXIST = 17,     // duplicate (e.g. an op id already in use)
	AA_ECONNREF = 18,   // connection refused
	AA_ECRYPTO = 19,    // TLS or certificate failure
	AA_ESYSTEM = 20,    // an operating-system call failed
	AA_EINTERNAL = 21,  // bug: an invariant of the library broke
	AA_EAPP = 22,       // an application failure: its own code is read
	                    // with aa_op_app_code, never as an AA_E* code
	AA_ESRVCANCEL = 23, // the server cancelled the op on its own (not
	                    // this client's cancel, which gives ECANCELED)
};

// The largest AA_E* code of this version (new codes get new numbers).
#define AA_ELAST AA_ESRVCANCEL

// aa_strerror returns a static, human-readable text for an error code.
const char *aa_strerror(int err);

// Kinds of library objects whose live instances are counted.
typedef enum aa_live_kind {
	AA_LIVE_OP,       // aa_op
	AA_LIVE_EXECUTOR, // pools, strands
	AA_LIVE_WORK,     // work items allocated by aa_executor_post
	AA_LIVE_SIGNAL,   // aa_cancel_signal
	AA_LIVE_RECYCLER, // aa_recycler
	AA_LIVE_CLIENT,   // client layer objects (connections, clients)
	AA_LIVE_SERVER,   // server layer objects (servers, sessions)
	AA_LIVE_OTHER,    // any other heap object of the library
	AA_LIVE_NKINDS
} aa_live_kind;

// aa_live returns how many objects of a kind are alive now.
int64_t aa_live(aa_live_kind kind);

// aa_live_total returns how many library objects of all kinds are alive.
int64_t aa_live_total(void);

// aa_heap_allocs returns how many times the library called malloc so far
// (recycled memory does not count): tests and benchmarks use it to prove
// that steady-state calls allocate nothing.
uint64_t aa_heap_allocs(void);

#ifdef __cplusplus
}
#endif
#endif // AA_ERRORS_H
