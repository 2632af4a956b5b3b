// aa/server.h: the server layer, the "fake client". It accepts clients,
// starts the real operation (an aa_op made by a registered method) for each
// Start, forwards Cancel to it, forwards its Progress, and sends its
// Complete, also when the client had cancelled (the client drops it and
// learns the real outcome from it). docs/client-server.md is the guide.
//
// A client that goes away (closed, killed, or silent past the heartbeat
// bound) has every real op cancelled. Closing the server says Goodbye to
// every client (their ops end in ERROR, AA_EUNAVAIL) and cancels every
// real op. Limits are enforced before anything starts: message size,
// pending ops per client, unknown method, duplicate op id, malformed
// message (the connection is closed with AA_EPROTO, others keep going).
//
// Checkpoints (aa/checkpoint.h, docs/checkpoints.md): "server.before_start"
// (subject: the call's const aa_call_info *) and "server.before_reply"
// (subject: the real aa_op *, final).
#ifndef AA_SERVER_H
#define AA_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <aa/op.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct aa_server aa_server;

// What the server knows of one call, for a method and for the log.
typedef struct aa_call_info {
	uint64_t op_id;   // the client's op id (its logs name it)
	uint64_t conn_id; // the connection's id
	const char *method;
	uint32_t deadline_ms;  // 0 = none; the server enforces it
	unsigned cancel_types; // the types the method declared
} aa_call_info;

// A method starts the real operation. On success it returns 0 and *opp, a
// started op whose reference now belongs to the server. An error is sent
// back as a rejection with that code and nothing runs. The method runs on
// the connection's receive thread: it must start work, not do it. assoc
// carries the server's executor (if any) and allocator (a recycler owned
// by the server: make the op with aa_op_alloc(opp, prov, assoc) so that
// steady state allocates nothing). The method must not set the op's
// handlers: the server sets them. call and payload are valid only during
// the call.
typedef int (*aa_method_fn)(aa_op **opp, void *arg, const aa_call_info *call,
                            const void *payload, size_t len,
                            const aa_assoc *assoc);

// aa_server_reject_reason, called by a method about to return an error,
// gives the rejection this text (copied; at most 1024 bytes are sent)
// instead of aa_strerror's. Outside a method it does nothing.
void aa_server_reject_reason(const char *text);

// A compensation hook runs when the real op COMPLETED but its result will
// not be used: the client had cancelled it, or the Complete could not be
// sent (client gone, server closing). Undo the result here. It runs on
// the thread that finished the op, after the Complete was sent or dropped.
typedef void (*aa_compensate_fn)(void *arg, const aa_call_info *call,
                                 aa_op *op);

typedef struct aa_method_def {
	const char *name;
	aa_method_fn start;
	aa_compensate_fn compensate; // may be NULL
	void *arg;
	unsigned cancel_types; // the aa_cancel_type mask it honours
	// Typed methods (aa/service.h sets it): a hash of the input and
	// output message types, sent in the Hello; 0 = untyped.
	uint64_t type_fingerprint;
} aa_method_def;

// Server-side events, reported to the log function.
typedef enum aa_server_event {
	AA_SEV_CONNECTED,       // a client finished its handshake
	AA_SEV_START,           // a real op started
	AA_SEV_REJECTED,        // a Start refused (error says why)
	AA_SEV_CANCEL_RECEIVED, // a Cancel arrived for a running op
	AA_SEV_COMPLETED,       // the real op completed
	AA_SEV_CANCELED,        // the real op ended cancelled
	AA_SEV_FAILED,          // the real op failed
	AA_SEV_COMPENSATED,     // the compensation hook ran
	AA_SEV_REPLY_SENT,      // its Complete went out
	AA_SEV_REPLY_DROPPED,   // its Complete could not go out (client gone)
	AA_SEV_CLIENT_GONE,     // a client's connection ended
	AA_SEV_PROTOCOL_ERROR,  // a malformed or unexpected message
} aa_server_event;

typedef struct aa_server_log_rec {
	aa_server_event event;
	uint64_t op_id; // 0 when the event is not about one op
	uint64_t conn_id;
	const char *method; // "" when not about one op
	uint64_t t_us;      // monotonic microseconds
	int error;          // AA_E* code, or 0
	const char *detail; // a short text, or ""
	int32_t app_code;   // with error AA_EAPP: the application's code
} aa_server_log_rec;

// The log function runs on the thread where the event happened, must be
// short, and must not call into the server.
typedef void (*aa_server_log_fn)(void *arg, const aa_server_log_rec *rec);

typedef struct aa_server_opts {
	size_t max_msg_size;  // 0: 1 MiB; else 512 .. 2^31 - 1
	uint32_t max_pending; // per client instance, over all its
	                      // connections; 0: 1024
	int heartbeat_ms;     // 0: 1000; < 0: no heartbeats. A client that
	                      // asks for a shorter interval gets it.
	int dead_after_ms;    // 0: 3 heartbeat intervals (as agreed with
	                      // each client); < 0: off
	aa_server_log_fn log; // may be NULL
	void *log_arg;
	aa_executor *executor; // passed to methods in assoc; may be NULL
	// Flow control (docs/protocol.md § 17): when more than
	// send_queue_pause bytes wait to be written to a client, the server
	// stops reading that client (its Starts wait; others are served) until
	// they drop to half; a client whose queue would pass send_queue_max is
	// dropped (AA_ELIMIT) with a best-effort Goodbye{ELIMIT} after the
	// reply being written (ipc, tcp; 1 s linger). send_budget bounds the
	// bytes queued to all clients together: past it, every client with
	// bytes queued stops reading too. 0: 1 MiB, 32 MiB and 256 MiB.
	size_t send_queue_pause;
	size_t send_queue_max;
	size_t send_budget;
	// A demo and test knob, not for production: hold every Complete this
	// many milliseconds before sending it, as a slow link would, so that
	// a client's Cancel and the Complete cross on the wire (the
	// already-complete timeline). 0 = off.
	int reply_delay_ms;
	// tls+tcp:// only: certificate and key (PEM files); a CA to ask
	// clients for certificates signed by it.
	const char *tls_cert_file;
	const char *tls_key_file;
	const char *tls_ca_file;
} aa_server_opts;

typedef struct aa_server_stats {
	uint64_t clients;          // clients connected now
	uint64_t started;          // real ops started
	uint64_t rejected;         // Starts refused
	uint64_t cancels_received; // Cancel messages for running ops
	uint64_t cancels_ignored;  // Cancels for unknown or finished ops,
	                           // repeated, or of a type not honoured
	uint64_t completed;        // real ops by outcome
	uint64_t canceled;
	uint64_t failed;
	uint64_t wasted;   // completed, result unused (client cancelled,
	                   // or the Complete could not be delivered)
	uint64_t orphaned; // real ops cancelled because the client left
	uint64_t replies_sent;
	uint64_t replies_dropped;
	uint64_t progress_sent; // Progress messages sent
	uint64_t protocol_errors;
	uint64_t pending;      // real ops running now
	uint64_t cancels_late; // of cancels_ignored: for an op the server
	                       // had already finished (logged
	                       // cancel_received, "after completion")
	uint64_t send_queued;  // bytes waiting to be written to clients now
	uint64_t reads_paused; // times a client's reading was paused because
	                       // it did not read (or the budget was over)
} aa_server_stats;

// aa_server_alloc makes a server with no methods and no listeners.
int aa_server_alloc(aa_server **sp, const aa_server_opts *o);

// aa_server_register adds a method (the name is copied); AA_EEXIST for a
// taken name, AA_EINVAL for a bad definition, AA_ESTATE after the first
// listen (register every method before it).
int aa_server_register(aa_server *s, const aa_method_def *def);

// aa_server_listen starts listening on url (may be called several times,
// for several URLs): inproc://, ipc://, tcp://, tls+tcp://. AA_ECLOSED
// after close; the transport's errors (AA_EBUSY, AA_EINVAL, ...).
int aa_server_listen(aa_server *s, const char *url);

// aa_server_port returns the TCP port of the last tcp:// or tls+tcp://
// listener (useful with port 0), or 0.
int aa_server_port(aa_server *s);

// aa_server_stats_get copies s's counters into *st.
void aa_server_stats_get(aa_server *s, aa_server_stats *st);

// aa_server_event_name returns the event's log name ("start",
// "cancel_received", "reply_sent", ...).
const char *aa_server_event_name(aa_server_event e);

// aa_server_close stops listening, says Goodbye (AA_EUNAVAIL) to every
// client and cancels every real op (their Completes are dropped).
// Idempotent; never waits for I/O or for ops to end (only, as
// aa_op_cancel does, for a real op's handler running at that moment on
// another thread); may be called from a callback.
void aa_server_close(aa_server *s);

// aa_server_stop closes s and waits until no callback of it runs and every
// real op has ended: 0, or AA_EDEADLK from inside one of its callbacks (or
// from a callback of an inproc client that the thread of one of s's
// connections runs for it: stop would wait for that thread).
int aa_server_stop(aa_server *s);

// aa_server_free closes, stops and frees s. Must not be called from one of
// s's callbacks (a method, a hook, the log function), nor where stop says
// AA_EDEADLK: that aborts.
void aa_server_free(aa_server *s);

#ifdef __cplusplus
}
#endif
#endif // AA_SERVER_H
