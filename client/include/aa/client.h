// aa/client.h: the client layer. A call to a remote method returns a
// started aa_op at once; everything asked of the op (handler, status,
// results, release) is answered locally, and only Start, Cancel (and the
// server's Complete and Progress) cross the wire. docs/client-server.md is
// the guide, docs/protocol.md the wire.
//
// Cancellation follows three timelines; in each the op is CANCELED inside
// aa_op_cancel, its handler has run when cancel returns (no executor), and
// its results fail with AA_ECANCELED, whatever the server does:
//   pre-submit        Start not sent yet: nothing is ever sent;
//   in-flight         Start sent: a Cancel follows, the late Complete is
//                     dropped (its status becomes the op's settlement);
//   already-complete  the server's Complete had arrived but was not yet
//                     handed over: it is dropped, nothing more is sent.
// aa_client_timeline tells which one applied.
//
// Ownership: aa_client_call gives the caller one reference to the op; the
// client keeps its own until the op is final and settled. Closing a client
// cancels every pending op (CANCELED; the server is told). Losing the
// server ends every unfinished op in ERROR (AA_ECONNLOST, or AA_EUNAVAIL
// when the server said goodbye) with settlement "unknown".
#ifndef AA_CLIENT_H
#define AA_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <aa/op.h>
#include <aa/url.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct aa_client aa_client;

typedef struct aa_client_opts {
	const char *url;        // NULL: aa_default_url()
	size_t max_msg_size;    // largest message either way; 0: 1 MiB
	uint32_t max_pending;   // ops in flight at once; 0: the server's
	int heartbeat_ms;       // idle interval between heartbeats; 0: 1000
	int dead_after_ms;      // silence that means the server is gone;
	                        // 0: 3 heartbeat intervals
	int connect_timeout_ms; // 0: 5000
	size_t send_queue_max;  // bytes waiting to be written to the server
	                        // past which the connection is dropped
	                        // (AA_ELIMIT: it does not read; a Goodbye
	                        // says so, best effort); 0: 64 MiB
	bool reconnect;         // after a loss, the next call dials again
	                        // (on a thread of its own: calls never
	                        // block; only aa_client_open waits)
	// tls+tcp:// only: the CA that signed the server, and whether to
	// verify it (tls_server_name: the name its certificate must carry);
	// a client certificate if the server asks for one.
	const char *tls_ca_file;
	const char *tls_server_name;
	bool tls_verify;
	const char *tls_cert_file;
	const char *tls_key_file;
} aa_client_opts;

// Options of one call. Zero everywhere is the default.
typedef struct aa_call_opts {
	uint32_t deadline_ms; // sent with Start and enforced locally too: the
	                      // op fails AA_ETIMEDOUT; 0 = none
} aa_call_opts;

// Which cancellation timeline applied (aa_client_timeline).
typedef enum aa_timeline {
	AA_TIMELINE_NONE = 0, // not cancelled
	AA_TIMELINE_PRE_SUBMIT = 1,
	AA_TIMELINE_IN_FLIGHT = 2,
	AA_TIMELINE_ALREADY_COMPLETE = 3,
} aa_timeline;

typedef struct aa_client_stats {
	uint64_t calls;     // ops created
	uint64_t completed; // ops by final state
	uint64_t canceled;
	uint64_t failed;
	uint64_t pre_submit; // cancels by timeline
	uint64_t in_flight;
	uint64_t already_complete;
	uint64_t late_dropped;    // Complete messages dropped (op cancelled)
	uint64_t unknown_dropped; // messages for unknown op ids
	uint64_t sent_start;      // messages sent, by kind
	uint64_t sent_cancel;
	uint64_t sent_other;    // hello, heartbeat, goodbye
	uint64_t recv_complete; // messages received, by kind
	uint64_t recv_progress;
	uint64_t recv_other;
	uint64_t connects; // successful handshakes
	uint64_t pending;  // ops in the table now
	// Flow control (docs/protocol.md § 17): bytes waiting to be written
	// to the server now (ipc://, tcp://, tls+tcp://; 0 over inproc://),
	// and connections dropped because they would pass send_queue_max.
	uint64_t send_queued;
	uint64_t send_limit_drops;
} aa_client_stats;

// aa_client_open connects to o->url and performs the handshake, blocking up
// to connect_timeout_ms. AA_ECONNREF, AA_ETIMEDOUT, AA_ENOTSUP (the server
// speaks another protocol version), AA_EPROTO,
// AA_ECRYPTO, AA_EINVAL.
int aa_client_open(aa_client **cp, const aa_client_opts *o);

// aa_client_call starts method(payload) on the server and returns the op
// at once; Start is submitted asynchronously. It never blocks, also with
// `reconnect` set and no connection: a reconnect then runs on a thread of
// its own and the call waits in the queue (pre-submit: cancelling it sends
// nothing) until the handshake, or fails with the reconnect's error.
// AA_ENOENT for a method the server does not have (nothing sent),
// AA_ELIMIT over max_pending, AA_ECLOSED, the loss's error (e.g.
// AA_ECONNLOST) when disconnected and not reconnecting, AA_ESTATE in a
// forked child of the process that opened c (a client belongs to that
// process). On an error no op is made and no handler runs. assoc (may be
// NULL) carries the
// handler's executor, the op's allocator and a parent's cancellation slot.
int aa_client_call(aa_op **opp, aa_client *c, const char *method,
                   const void *payload, size_t len, const aa_call_opts *co,
                   const aa_assoc *assoc);

// aa_client_timeline says which cancellation timeline applied to an op of
// this client (AA_TIMELINE_NONE if it was not cancelled). A cancel after
// the Start was sent reads AA_TIMELINE_IN_FLIGHT at once; when the late
// Complete arrives and says the server's op had finished before the
// Cancel reached it, it is refined to AA_TIMELINE_ALREADY_COMPLETE. The
// value is final once the op's settlement is known (its settle handler
// runs after the refinement); the counters follow the final value.
aa_timeline aa_client_timeline(const aa_op *op);

// aa_timeline_name returns "none", "pre_submit", "in_flight" or
// "already_complete".
const char *aa_timeline_name(aa_timeline t);

// aa_client_op_id returns the op's id on the wire (the server's logs name
// it), for an op of this client; 0 otherwise.
uint64_t aa_client_op_id(const aa_op *op);

// aa_client_conn_id returns the connection id the server assigned (its
// logs name it), 0 when not connected.
uint64_t aa_client_conn_id(aa_client *c);

// aa_client_method_cancel_types gives the cancellation types the server
// declared for method: 0 or AA_ENOENT (AA_ESTATE in a forked child).
int aa_client_method_cancel_types(aa_client *c, const char *method,
                                  unsigned *types);

// aa_client_method_fingerprint gives the type fingerprint the server
// declared for method (0: an untyped method; aa/service.h): 0 or
// AA_ENOENT (AA_ESTATE in a forked child, as for every call there).
int aa_client_method_fingerprint(aa_client *c, const char *method,
                                 uint64_t *fp);

// aa_client_cork holds Start messages back; aa_client_uncork sends every
// held one in one write. Calls made while corked are pre-submit until the
// uncork. Corks nest.
void aa_client_cork(aa_client *c);
void aa_client_uncork(aa_client *c);

// aa_client_cancel_all cancels every pending op of c with type; returns how
// many it cancelled.
int aa_client_cancel_all(aa_client *c, aa_cancel_type type);

// aa_client_stats_get copies c's counters into *st.
void aa_client_stats_get(aa_client *c, aa_client_stats *st);

// aa_client_close cancels every pending op (each ends CANCELED, the server
// is told) and closes the connection. Idempotent; it waits for nothing but
// what aa_op_cancel waits for (a handler running on another thread). A
// handler that close runs may call aa_client_free (deferred).
void aa_client_close(aa_client *c);

// aa_client_stop closes c and waits until none of its callbacks runs:
// 0, or AA_EDEADLK from inside one of them (or from a callback of an
// inproc server that c's connection thread runs for it: stop would wait
// for that thread).
int aa_client_stop(aa_client *c);

// aa_client_free closes, stops and frees c. From inside one of c's
// callbacks (or where stop says AA_EDEADLK) the free is deferred until
// that callback returns.
void aa_client_free(aa_client *c);

#ifdef __cplusplus
}
#endif
#endif // AA_CLIENT_H
