// server_impl.h: what the files of the server layer share: its objects
// and the functions one file gives the others. Internal. The layer's
// overview is at the top of server.c; each file's own design notes are at
// the top of that file:
//   server.c   the server object: methods, listeners, log, close, stop
//   session.c  a client connection: handshake, frames, loss, lifetime
//   call.c     a call: the real op's start, cancel, progress and Complete
//   dedup.c    client instances: op-id high-water marks, pending counts
#ifndef AA_SERVER_IMPL_H
#define AA_SERVER_IMPL_H

#include <aa/server.h>
#include <aa/timer.h>

#include "aai.h"
#include "layer.h"
#include "transport.h"
#include "wire.h"
#include "wire_send.h"

#define DEFAULT_MAX_MSG      (1u << 20)
#define DEFAULT_MAX_PENDING  1024u
#define DEFAULT_HEARTBEAT_MS 1000
#define HANDSHAKE_TIMEOUT_MS 10000        // docs/protocol.md § 4
#define GOODBYE_LINGER_MS    250          // time for a Goodbye to be written
#define ARENA_BYTES          (16u * 1024) // the most a session's arena keeps
#define OP_BUCKETS_MIN       64
#define DEFAULT_SEND_PAUSE   (1u << 20)   // docs/protocol.md § 17
#define DEFAULT_SEND_MAX     (32u << 20)  // per connection
#define DEFAULT_SEND_BUDGET  (256u << 20) // all connections
// How long an instance's high-water mark outlives its last connection
// (docs/protocol.md § 6: "minutes, not seconds").
#define INSTANCE_GRACE_US (10ull * 60 * 1000000)

typedef struct method {
	char *name;
	aa_method_def def;
} method;

// A client instance (dedup.c): all connections with one instance id.
typedef struct instance {
	aai_idmap_node node;      // in s->instances by instance id (s->mtx)
	_Atomic uint64_t high;    // highest op id accepted from this instance
	_Atomic uint32_t pending; // ops pending over all its connections
	int conns;        // s->mtx: connections that said Hello with it
	uint64_t left_us; // s->mtx: when the last of them went down
} instance;

typedef struct session session;

// Where a call is (call.c's notes have the transitions).
typedef enum entry_phase {
	E_STARTING, // the method runs: op NULL, in the session's map
	E_RUNNING,  // the real op runs: in the map, its handlers set
	E_FINISHED, // its handler runs: Complete sent, then out of the map
	E_REFUSED,  // the method refused to start: out of the map
} entry_phase;

// The client's Cancel, if one came.
typedef enum entry_cancel {
	EC_NONE,
	EC_WHILE_RUNNING, // while the op ran (Complete.cancel_received)
	EC_AFTER_FINISH,  // after the op had finished (already-complete)
} entry_cancel;

// The server's own cancel, if it made one.
typedef enum entry_srv_cancel {
	ES_NONE,
	ES_CANCELLED, // close, orphaning, or a deadline after a Cancel
	ES_TIMED_OUT, // the deadline, the client not having cancelled
} entry_srv_cancel;

// The deadline timer.
typedef enum entry_deadline {
	ED_NONE,  // no deadline, or the timer could not be armed
	ED_ARMED, // armed: the handler disarms it
	ED_FIRED, // its function passed its check: nobody waits for it
} entry_deadline;

// A call: one real op. Every field but node.next and op is under ss->mtx.
// The deadline timer comes last and is allocated only for a call with a
// deadline (aai_entry_size): 48 of the entry's bytes that a call without
// one does not pay.
typedef struct entry {
	aai_idmap_node node; // in ss->ops by op id
	struct entry *wnext; // a walker's list
	session *ss;
	const method *m;
	aa_op *op; // NULL while the method runs
	aa_call_info call;
	int refs;
	entry_phase phase : 8;
	entry_cancel cancel : 8;
	entry_srv_cancel srv_cancel : 8;
	entry_deadline dl : 8;
	aa_timer deadline; // last: present when call.deadline_ms > 0
} entry;

// aai_entry_size is the bytes an entry takes: without the deadline timer
// when the call has no deadline.
static inline size_t
aai_entry_size(uint32_t deadline_ms)
{
	return deadline_ms > 0 ? sizeof(entry) : offsetof(entry, deadline);
}

// Session states (session.c's notes).
typedef enum ss_state {
	SS_HANDSHAKE,
	SS_READY,
	SS_CLOSING,
	SS_DOWN,
} ss_state;

struct session {
	session *next, *prev; // s->sessions (s->mtx)
	session *wnext;       // server close's walk (s->mtx to link)
	aa_server *s;
	aai_conn *conn;
	uint64_t conn_id;
	pthread_mutex_t mtx;
	int refs; // ss->mtx
	ss_state state;
	bool connected; // counted in stats.clients
	bool hs_armed, linger_armed;
	aai_idmap ops; // op id -> entry: this connection's pending calls
	// Receive thread only:
	instance *inst;
	uint64_t base;        // instance's high-water mark at Hello
	size_t send_max;      // the client's max message size (capped by ours)
	aai_wire_arena arena; // growing, up to ARENA_BYTES
	aa_timer hs_timer, linger_timer, reap_timer;
};

typedef struct counters {
	_Atomic uint64_t clients, started, rejected, cancels_received,
	    cancels_ignored, completed, canceled, failed, wasted, orphaned,
	    replies_sent, replies_dropped, progress_sent, protocol_errors,
	    pending, cancels_late;
} counters;

struct aa_server {
	pthread_mutex_t mtx;
	pthread_cond_t cv; // nsessions reached 0
	// Configuration, fixed at alloc.
	size_t max_msg;
	uint32_t max_pending;
	int heartbeat_ms; // 0 = off
	int dead_after_ms;
	bool dead_after_set; // dead_after_ms was configured, not derived
	int reply_delay_ms;  // aa_server_opts.reply_delay_ms
	size_t send_pause;   // flow control, per connection (transport.h)
	size_t send_max;
	aai_tp_budget budget; // bytes queued over all connections
	aa_server_log_fn log;
	void *log_arg;
	char *tls_cert, *tls_key, *tls_ca;
	uint8_t hb_frame[16];
	size_t hb_len;
	uint8_t limit_frame[96]; // Goodbye{ELIMIT}: the drop's last word
	size_t limit_len;
	aa_assoc assoc;
	aai_pool *pool; // entries and real ops; outlives s while ops live
	aa_timer_queue *tq;
	// Methods: appended under mtx until frozen, then read-only.
	method *methods;
	size_t nmethods, cap_methods;
	uint32_t *mhash; // index + 1, 0 = empty
	size_t mhash_size;
	aai_wire_method *wire_methods;
	bool frozen;
	// mtx:
	aai_listener **listeners;
	size_t nlisteners, cap_listeners;
	int port;
	session *sessions;
	size_t nsessions;
	aai_idmap instances; // instance id -> instance (dedup.c)
	bool closed;
	int closers;  // threads inside aa_server_close: stop waits for them
	int stoppers; // threads inside aa_server_stop: free waits for them
	_Atomic bool closed_flag; // closed, readable without the lock
	counters st;
};

static inline void
aai_count(_Atomic uint64_t *c)
{
	atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

// aai_weakest returns the weakest cancellation type in mask, or NONE.
static inline aa_cancel_type
aai_weakest(unsigned mask)
{
	mask &= AA_CANCEL_ALL;
	return (aa_cancel_type)(mask & (0u - mask));
}

// ---- server.c ----

// aai_srv_log_op reports an event about op op_id (0: about no op) to the
// log function, if any; aai_srv_log takes them from an entry (or NULL).
// Never under a server lock.
void aai_srv_log_op(aa_server *s, aa_server_event ev, uint64_t conn_id,
                    uint64_t op_id, const char *name, int err,
                    int32_t app_code, const char *detail);
void aai_srv_log(aa_server *s, aa_server_event ev, uint64_t conn_id,
                 const entry *e, int err, const char *detail);

// aai_srv_method_find returns the method called name, or NULL (the table
// is frozen: no lock).
const method *aai_srv_method_find(aa_server *s, const char *name);

// ---- session.c ----

// aai_session_accept takes a new connection (the listeners' callback).
void aai_session_accept(void *arg, aai_conn *c);

// aai_session_unref drops a reference; the last one frees the session on
// the timer thread.
void aai_session_unref(session *ss);

// aai_session_goodbye_locked sends Goodbye(reason) unless the session is
// past it, and arms the linger that closes it. Expects ss->mtx; false when
// it was closing or down already.
bool aai_session_goodbye_locked(session *ss, int reason, const char *why);

// ---- call.c ----

// aai_call_start and aai_call_cancel handle a Start and a Cancel (on the
// connection's receive thread, no lock held).
void aai_call_start(session *ss, const aai_wire_msg *m, uint64_t t0_us);
void aai_call_cancel(session *ss, const aai_wire_msg *m);

// aai_call_cancel_all cancels every real op of ss not cancelled by the
// server yet, adding how many to *counter (may be NULL). No lock held.
void aai_call_cancel_all(session *ss, _Atomic uint64_t *counter);

// ---- dedup.c ----

// aai_instance_get finds or adds instance id and counts one more
// connection of it; NULL on ENOMEM. Expects s->mtx.
instance *aai_instance_get(aa_server *s, uint64_t id);

// aai_instance_left counts one connection of inst less. Expects s->mtx.
void aai_instance_left(aa_server *s, instance *inst);

// aai_instances_free frees every instance (aa_server_free).
void aai_instances_free(aa_server *s);

#endif // AA_SERVER_IMPL_H
