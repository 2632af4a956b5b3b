// client_impl.h: what the files of the client layer share: its objects
// and the functions one file gives the others. Internal. The layer's
// overview is at the top of client.c; each file's own design notes are at
// the top of that file:
//   client.c  the client object: open, close, stop, free, queries, memory
//   link.c    the connection: handshake, frames in, loss, reconnect
//   submit.c  calls: the submit queue, flushing, corking, deadlines' time
//   cop.c     the client op: its states, cancel and its timelines, the
//             server's answer, deadlines, finishing
#ifndef AA_CLIENT_IMPL_H
#define AA_CLIENT_IMPL_H

#include <aa/client.h>

#include "aai.h"
#include "layer.h"
#include "transport.h"
#include "wire.h"
#include "wire_send.h"

// Submit states of a cop (client.c's notes; all under the client's mutex).
enum cop_state {
	COP_NEW, // being set up by aa_client_call (the zeroed state)
	COP_QUEUED,
	COP_SENT,
	COP_RECEIVED,
	COP_DONE,
};

typedef struct cop cop;
typedef struct clink clink;

// A client op: the provider memory of the aa_op that aa_client_call makes.
struct cop {
	aai_idmap_node node; // in c->ops by wire id (node.id)
	aa_client *c;
	aa_op *op;
	enum cop_state state;
	// Which timeline a cancel took: written under the client's lock,
	// read by aa_client_timeline without it (the op may outlive c). An
	// in-flight cancel becomes already-complete when the late Complete
	// says the server's op had finished before the Cancel reached it.
	atomic_int timeline;
	bool was_sent;   // its Start was handed to the transport
	bool in_flusher; // taken off the queue by a flusher
	bool has_deadline;
	bool payload_owned; // payload is a copy the op frees
	// An in-flight cancel's Cancel frame, written after the user's
	// handler (aai_cop_after_cancel): its type (0: none owed) and the
	// link it was owed on. Only the cancelling thread touches them.
	uint8_t cancel_owed;
	uint32_t cancel_gen;
	uint64_t t0_us; // when the call was made (the deadline counts from)
	cop *qnext;     // submit queue
	cop *qprev;
	const char *method; // in the client's method table
	uint32_t deadline_ms;
	uint32_t cancel_types;
	void *payload; // until Start is sent: the caller's (during the call)
	size_t payload_len; // or a copy (payload_owned; submit.c)
	// Last: a call without a deadline makes its op without these bytes
	// (aai_cop_size); only has_deadline says the timer is there.
	aa_timer deadline;
};

// aai_cop_size is the provider memory of a call's op: without the deadline
// timer when the call has no deadline.
static inline size_t
aai_cop_size(uint32_t deadline_ms)
{
	return deadline_ms != 0 ? sizeof(cop) : offsetof(cop, deadline);
}

// A link: one transport connection and its decode arena (a growing one:
// it holds what the server's frames needed, up to LINK_ARENA_MAX).
struct clink {
	aa_client *c;
	aai_conn *conn;
	aai_wire_arena arena;
	bool hello;        // the server's Hello arrived
	int goodbye;       // the server's Goodbye reason, or 0
	int refused;       // we refused the server's Hello (AA_ENOTSUP), or 0
	char *goodbye_msg; // and its message (NULL: none); c->mtx
	clink *next_dead;  // down, waiting to be freed
	bool down;         // its down callback ran
	int pins;          // threads still using it (a connect, a close): it
	                   // is not freed while pinned (c->mtx)
	uint64_t conn_id;  // the server's id for it, from its Hello
};

#define LINK_ARENA_MAX 8192u // larger frames decode into heap spills

typedef struct method {
	char *name;
	unsigned types;
	uint64_t fingerprint; // a typed method's types (aa/service.h); 0
} method;

struct aa_client {
	pthread_mutex_t mtx;
	pthread_cond_t cv; // handshake and flusher changes
	char *url;
	aa_client_opts opts;
	aai_tp_opts tp;
	uint8_t heartbeat[32];
	uint8_t limit_frame[96]; // Goodbye{ELIMIT}: the drop's last word
	uint64_t instance_id;
	uint64_t next_id;
	clink *link; // NULL when not connected
	uint32_t
	    link_gen;     // counts links made: which one a cop's Cancel is for
	int cancels_owed; // cancels whose Cancel frame is not written yet:
	                  // stop waits for them
	clink *dead;      // links that went down, freed outside them
	int live_links;   // links whose down callback has not ended
	uint64_t conn_id; // the server's id for the link
	int down_err;     // why the last link went down
	bool closed;
	int closers;  // threads inside aa_client_close: stop waits for them
	int stoppers; // threads inside aa_client_stop: free waits for them
	// A reconnect runs on a thread of its own (aai_link_reconnect) while
	// calls queue, pre-submit: nothing blocks a caller.
	bool reconnecting;
	int reconnectors;    // reconnect threads not finished: stop waits
	bool dead_after_set; // opts.dead_after_ms was given, not derived
	method *methods;
	size_t n_methods;
	size_t methods_cap;
	uint32_t server_max_pending;
	uint32_t server_max_msg;
	aai_idmap ops; // pending ops by wire id
	cop *qhead;    // the submit queue
	cop *qtail;
	int cork;
	bool flushing;
	aa_timer_queue *timers;
	aai_pool *pool; // op memory; outlives c while ops hold blocks
	aa_client_stats st;
	// Bytes queued to the server, counted by the transport (max 0: a
	// count, not a bound; the bound is tp.send_max per connection).
	aai_tp_budget sendq;
	unsigned forks; // forks counted when c was opened (client.c, "fork")
};

// ---- client.c ----

// aai_client_find_method finds name in c's method table. Expects c->mtx.
method *aai_client_find_method(aa_client *c, const char *name);

// aai_client_forked says whether this process is a fork of the one that
// opened c: then every call on c fails or does nothing (client.c, "fork").
bool aai_client_forked(const aa_client *c);

// ---- cop.c ----

static inline cop *
aai_cop_find(aa_client *c, uint64_t id)
{
	aai_idmap_node *n = aai_idmap_find(&c->ops, id);
	return n != NULL ? AAI_CONTAINER(n, cop, node) : NULL;
}

// aai_cop_cancel is the provider's cancel function of every client op.
int aai_cop_cancel(aa_op *op, aa_cancel_type type, void *arg);

// aai_cop_after_cancel is its after-cancel function: it writes the Cancel
// frame that aai_cop_cancel owed, once the user's handler was delivered.
void aai_cop_after_cancel(aa_op *op, void *arg);

// aai_cop_cancelling says whether this thread is between the two halves
// of a cancel of one of c's ops (its handler may run inside): c must not
// be stopped or freed under it (client.c treats it as inside a callback).
bool aai_cop_cancelling(const aa_client *c);

// aai_cop_deadline is the deadline timer's function (arg: the cop).
void aai_cop_deadline(void *arg);

// aai_cop_allocator returns the allocator the op was made with.
const aa_allocator *aai_cop_allocator(cop *p);

// aai_cop_free_payload frees the cop's copy of the payload, if any.
void aai_cop_free_payload(cop *p);

// aai_cop_retire drops what the client holds for a cop that left the
// table and the queue. Without the client's lock.
void aai_cop_retire(cop *p);

// aai_cop_fail ends an op the server will never answer: ERROR with err
// (absorbed if final already), settled s. Without the client's lock.
void aai_cop_fail(cop *p, int err, aa_settlement s, const char *why);

// aai_cop_on_complete and aai_cop_on_progress handle the server's
// Complete and Progress (on the link's receive thread, no lock held).
void aai_cop_on_complete(aa_client *c, const aai_wire_msg *m);
void aai_cop_on_progress(aa_client *c, const aai_wire_msg *m);

// ---- submit.c ----

// aai_submit_unlink takes p out of the submit queue. Expects c->mtx.
void aai_submit_unlink(aa_client *c, cop *p);

// aai_submit_flush sends the Start of every queued op (client.c's notes).
void aai_submit_flush(aa_client *c);

// ---- link.c ----

// aai_link_connect dials, says Hello and waits for the server's (blocking
// up to connect_timeout_ms), then publishes the link: 0 or an error.
int aai_link_connect(aa_client *c);

// aai_link_reconnect starts a reconnect on a thread of its own unless one
// runs; calls queue meanwhile and go out after its handshake, or fail
// with its error. Expects c->mtx; returns 0 or an error (no thread).
int aai_link_reconnect(aa_client *c);

// aai_link_free_dead frees links that went down. Never from a link's
// callback.
void aai_link_free_dead(aa_client *c);

#endif // AA_CLIENT_IMPL_H
