// wire.h: the codec of aaproxy's wire messages (proto/aa.proto, described
// in docs/protocol.md). Internal: the client and server layers use it; the
// transport only moves the bytes it produces. No protobuf type appears
// here: a message is an aai_wire_msg, a plain C view.
//
// Encoding: fill an aai_wire_msg (the aai_wire_<kind> helpers do it on the
// stack, copying nothing) and encode it into a caller buffer; aai_wire_size
// says how big it will be, so that a caller can reserve room in its send
// buffer and encode straight into it.
//
// Decoding: aai_wire_decode unpacks one frame (one encoded Envelope, without
// the transport's length prefix) into an aai_wire_msg whose strings (and,
// off the fast path, payloads) live in a caller-owned aai_wire_arena. The
// arena bump-allocates from a buffer the caller gives it, so steady-state
// decoding calls malloc zero times; a frame that does not fit spills into
// counted heap chunks (aai_alloc) that the next decode or reset frees. The
// message is then validated; bad input gives AA_EPROTO (or AA_EMSGSIZE) and a
// short static reason, never a crash.
//
// Thread safety: the functions keep no state; an arena and the messages
// decoded into it belong to one thread at a time.
#ifndef AA_WIRE_H
#define AA_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "aai.h"

// The protocol version this codec speaks (Hello.version).
#define AAI_WIRE_VERSION 1

// Protocol limits (docs/protocol.md, "Limits").
#define AAI_WIRE_METHOD_MAX   255    // bytes in a method name (UTF-8)
#define AAI_WIRE_TEXT_MAX     1024   // bytes in an error or goodbye message
#define AAI_WIRE_METHODS_MAX  65535  // entries in a Hello's method table
#define AAI_WIRE_MIN_MSG_SIZE 512    // smallest Hello.max_message_size
#define AAI_WIRE_ERROR_MAX    0xffff // largest error or reason code
#define AAI_WIRE_CANCEL_MASK  7      // TERMINAL | PARTIAL | TOTAL

// Decoding cost (docs/protocol.md, "Decoding cost"): a frame of n bytes may
// take at most AAI_WIRE_DECODE_FACTOR * n + AAI_WIRE_DECODE_SLACK bytes of
// arena memory, and a message at most AAI_WIRE_EXTRA_FIELDS_MAX fields
// that are unknown or repeat a singular field. Checked before unpacking.
#define AAI_WIRE_DECODE_FACTOR    24
#define AAI_WIRE_DECODE_SLACK     65536
#define AAI_WIRE_EXTRA_FIELDS_MAX 64

// Message kinds: the field numbers of Envelope's oneof.
typedef enum aai_wire_kind {
	AAI_WIRE_NONE = 0,
	AAI_WIRE_START = 1,
	AAI_WIRE_COMPLETE = 2,
	AAI_WIRE_CANCEL = 3,
	AAI_WIRE_PROGRESS = 4,
	AAI_WIRE_HEARTBEAT = 5,
	AAI_WIRE_HELLO = 6,
	AAI_WIRE_GOODBYE = 7,
} aai_wire_kind;

// Complete.status.
typedef enum aai_wire_status {
	AAI_WIRE_COMPLETED = 1,
	AAI_WIRE_CANCELED = 2,
	AAI_WIRE_FAILED = 3,
	AAI_WIRE_REJECTED = 4,
} aai_wire_status;

// Hello.role.
typedef enum aai_wire_role {
	AAI_WIRE_ROLE_CLIENT = 1,
	AAI_WIRE_ROLE_SERVER = 2,
} aai_wire_role;

// One entry of a server's method table.
typedef struct aai_wire_method {
	const char *name;      // 1..AAI_WIRE_METHOD_MAX bytes
	uint32_t cancel_types; // aa_cancel_type bitmask
	uint64_t fingerprint;  // typed method's types; 0 = untyped
} aai_wire_method;

typedef struct aai_wire_hello {
	uint32_t version;               // AAI_WIRE_VERSION
	aai_wire_role role;             // AAI_WIRE_ROLE_*
	uint32_t max_msg_size;          // >= AAI_WIRE_MIN_MSG_SIZE
	uint32_t max_pending;           // server: >= 1; client: 0
	uint32_t heartbeat_ms;          // see docs/protocol.md
	uint64_t instance_id;           // client: nonzero; server: 0
	uint64_t conn_id;               // server: nonzero; client: 0
	const aai_wire_method *methods; // server's table; client: none
	size_t n_methods;
} aai_wire_hello;

// A message: kind says which member of the union is meaningful. Strings
// are NUL-terminated; NULL reads as "". Pointers are borrowed: for
// encoding they must stay valid during the call, for decoding they point
// into the arena.
typedef struct aai_wire_msg {
	aai_wire_kind kind;
	uint64_t op_id; // START, COMPLETE, CANCEL, PROGRESS: nonzero
	union {
		struct {
			const char *method;
			const void *payload;
			size_t payload_len;
			uint32_t deadline_ms;  // 0 = none
			uint32_t cancel_types; // bitmask
		} start;
		struct {
			aai_wire_status status;
			uint32_t error; // AA_E* code
			const char *message;
			const void *payload;
			size_t payload_len;
			bool cancel_received; // the op's Cancel came first
			int32_t app_code;     // FAILED + EAPP: the app's code
		} complete;
		struct {
			uint32_t type; // one aa_cancel_type: 1, 2 or 4
		} cancel;
		struct {
			const void *payload;
			size_t payload_len;
		} progress;
		struct {
			uint64_t time_us; // 0 = not given
		} heartbeat;
		aai_wire_hello hello;
		struct {
			uint32_t reason; // AA_E* code, 0 = plain close
			const char *message;
		} goodbye;
	};
} aai_wire_msg;

// A bump arena for decoding. Initialise it over a buffer of the caller's
// (on the stack); 4 KiB plus the largest payload expected avoids every
// heap allocation. Or let it own a buffer that grows to what the frames
// seen so far needed (aai_wire_arena_init_growing): what a connection
// uses, so that an idle one pays for the frames it had, not for the
// largest it might get. Aligned to 16 bytes.
typedef struct aai_wire_arena {
	uint8_t *buf;                  // the caller's buffer, or its own
	size_t cap;                    // its size
	size_t used;                   // bytes handed out from buf
	size_t budget;                 // bytes this decode may still use
	struct aai_wire_chunk *chunks; // heap spill of this decode
	uint64_t spills;               // heap chunks allocated, ever
	size_t taken;                  // bytes the last decode took
	size_t grow_max; // growing: the largest buffer it keeps; 0: fixed
	void *owned;     // growing: its own allocation (buf within it)
} aai_wire_arena;

// aai_wire_arena_init prepares an arena over buf[0..cap) (buf may be NULL
// with cap 0: every decode then spills to the heap).
void aai_wire_arena_init(aai_wire_arena *a, void *buf, size_t cap);

// aai_wire_arena_init_growing prepares an arena that owns its buffer:
// none at first; before each decode, when the frame's worst-case cost
// does not fit, it replaces the buffer with one of that size rounded up to
// a power of two (at least AAI_WIRE_ARENA_GROW_MIN, at most grow_max) and
// keeps it. Frames needing more than grow_max spill to the heap as with a
// fixed buffer. Steady state (frames no bigger than before) allocates
// nothing. aai_wire_arena_fini frees the buffer.
#define AAI_WIRE_ARENA_GROW_MIN 512u
void aai_wire_arena_init_growing(aai_wire_arena *a, size_t grow_max);

// aai_wire_arena_reset forgets every decoded message and frees any spill.
void aai_wire_arena_reset(aai_wire_arena *a);

// aai_wire_arena_fini frees any spill, and a growing arena's buffer; the
// caller still owns a buffer it gave.
void aai_wire_arena_fini(aai_wire_arena *a);

// aai_wire_check validates a message against the protocol's rules, giving
// 0, or AA_EPROTO with a static reason in *why (why may be NULL).
int aai_wire_check(const char **why, const aai_wire_msg *m);

// aai_wire_size stores in *sizep the encoded size of m (the frame body,
// without the transport's prefix); AA_EINVAL if m breaks the rules.
int aai_wire_size(size_t *sizep, const aai_wire_msg *m);

// aai_wire_encode encodes m into buf[0..cap) and stores its size in *lenp.
// It returns 0; AA_EINVAL if m breaks the rules; AA_EMSGSIZE if the
// encoding would exceed max_size (0 = no limit); AA_ENOMEM if it fits the
// limit but not cap, with the size needed in *lenp. Error and goodbye
// messages longer than AAI_WIRE_TEXT_MAX are cut to it. Only a Hello with
// more than 16 methods allocates (temporarily).
int aai_wire_encode(size_t *lenp, void *buf, size_t cap, const aai_wire_msg *m,
                    size_t max_size);

// aai_wire_decode unpacks and validates one frame into *m, using (and
// first resetting) the arena. It returns 0; AA_EMSGSIZE if len exceeds
// max_size (0 = no limit); AA_EPROTO if the frame is malformed or breaks a
// rule, or would need more arena memory than the decoding cost allows
// (refused before anything is allocated). On error *why (may be NULL)
// gets a static reason. *m stays valid until the next decode into the
// arena, or its reset or fini, and while frame does: a payload may point
// into the frame itself (wire_fast.c reads it in place).
int aai_wire_decode(aai_wire_msg *m, const char **why, aai_wire_arena *a,
                    const void *frame, size_t len, size_t max_size);

// The arena's alignment: every allocation is rounded up to it
// (wire_arena.c), and the cost walk counts the same way (wire_scan.c).
#define AAI_WIRE_ARENA_ALIGN 8u

// aai_wire_utf8_seq returns the length (1-4) of the well-formed UTF-8
// sequence at p[0..n), or 0; aai_wire_utf8_ok says whether p[0..n) is
// well-formed UTF-8 without NUL bytes (wire_scan.c).
size_t aai_wire_utf8_seq(const uint8_t *p, size_t n);
bool aai_wire_utf8_ok(const uint8_t *p, size_t n);

// aai_wire_scan_envelope checks a frame's raw bytes: exactly one body, of
// a known kind, whose strings are UTF-8 without NUL bytes. 0, or
// AA_EPROTO with a static reason in *why (wire_scan.c).
int aai_wire_scan_envelope(const char **why, const uint8_t *p, size_t len);

// aai_wire_decode_cost stores in *costp an upper bound of the arena bytes
// decoding frame[0..len) takes, from a walk of its wire format that
// allocates nothing: 0, or AA_EPROTO (reason in *why) when the frame is
// malformed or has too many unknown, repeated or method fields. It does
// not apply the AAI_WIRE_DECODE_FACTOR cap; aai_wire_decode does.
int aai_wire_decode_cost(size_t *costp, const char **why, const void *frame,
                         size_t len);

// aai_wire_kind_name returns "start", "complete", ... or "none".
const char *aai_wire_kind_name(aai_wire_kind kind);

// aai_wire_status_name returns "completed", "canceled", "failed",
// "rejected" or "invalid".
const char *aai_wire_status_name(aai_wire_status status);

// Helpers that fill a message on the caller's stack. They copy nothing:
// the strings and payloads must outlive the encode call.

static inline void
aai_wire_start(aai_wire_msg *m, uint64_t op_id, const char *method,
               const void *payload, size_t len, uint32_t deadline_ms,
               uint32_t cancel_types)
{
	m->kind = AAI_WIRE_START;
	m->op_id = op_id;
	m->start.method = method;
	m->start.payload = payload;
	m->start.payload_len = len;
	m->start.deadline_ms = deadline_ms;
	m->start.cancel_types = cancel_types;
}

static inline void
aai_wire_complete(aai_wire_msg *m, uint64_t op_id, aai_wire_status status,
                  uint32_t error, const char *message, const void *payload,
                  size_t len)
{
	m->kind = AAI_WIRE_COMPLETE;
	m->op_id = op_id;
	m->complete.status = status;
	m->complete.error = error;
	m->complete.message = message;
	m->complete.payload = payload;
	m->complete.payload_len = len;
	m->complete.cancel_received = false;
	m->complete.app_code = 0;
}

static inline void
aai_wire_cancel(aai_wire_msg *m, uint64_t op_id, uint32_t type)
{
	m->kind = AAI_WIRE_CANCEL;
	m->op_id = op_id;
	m->cancel.type = type;
}

static inline void
aai_wire_progress(aai_wire_msg *m, uint64_t op_id, const void *payload,
                  size_t len)
{
	m->kind = AAI_WIRE_PROGRESS;
	m->op_id = op_id;
	m->progress.payload = payload;
	m->progress.payload_len = len;
}

static inline void
aai_wire_heartbeat(aai_wire_msg *m, uint64_t time_us)
{
	m->kind = AAI_WIRE_HEARTBEAT;
	m->op_id = 0;
	m->heartbeat.time_us = time_us;
}

static inline void
aai_wire_goodbye(aai_wire_msg *m, uint32_t reason, const char *message)
{
	m->kind = AAI_WIRE_GOODBYE;
	m->op_id = 0;
	m->goodbye.reason = reason;
	m->goodbye.message = message;
}

// aai_wire_hello_client fills a client's Hello (version, role, no table).
static inline void
aai_wire_hello_client(aai_wire_msg *m, uint64_t instance_id,
                      uint32_t max_msg_size, uint32_t heartbeat_ms)
{
	m->kind = AAI_WIRE_HELLO;
	m->op_id = 0;
	m->hello = (aai_wire_hello){
	    .version = AAI_WIRE_VERSION,
	    .role = AAI_WIRE_ROLE_CLIENT,
	    .max_msg_size = max_msg_size,
	    .heartbeat_ms = heartbeat_ms,
	    .instance_id = instance_id,
	};
}

// aai_wire_hello_server fills a server's Hello answering a client.
static inline void
aai_wire_hello_server(aai_wire_msg *m, uint64_t conn_id, uint32_t max_msg_size,
                      uint32_t max_pending, uint32_t heartbeat_ms,
                      const aai_wire_method *methods, size_t n_methods)
{
	m->kind = AAI_WIRE_HELLO;
	m->op_id = 0;
	m->hello = (aai_wire_hello){
	    .version = AAI_WIRE_VERSION,
	    .role = AAI_WIRE_ROLE_SERVER,
	    .max_msg_size = max_msg_size,
	    .max_pending = max_pending,
	    .heartbeat_ms = heartbeat_ms,
	    .conn_id = conn_id,
	    .methods = methods,
	    .n_methods = n_methods,
	};
}

#endif // AA_WIRE_H
