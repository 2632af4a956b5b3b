// session.c: one client connection of the server: handshake, frames,
// goodbye, loss, and the session's lifetime.
//
// Design notes.
//
// * States (ss->mtx): HANDSHAKE (waiting for the client's Hello, 10 s at
//   most) -> READY (Hello answered) -> CLOSING (a Goodbye was sent or
//   received: nothing more is sent, frames are ignored, the connection is
//   closed after a short linger so that the Goodbye gets written) -> DOWN
//   (the transport's down callback ran). Any state may go straight to
//   DOWN. Frames, Hello, Start, Cancel and down run on the connection's
//   receive thread, serialised.
//
// * The Hello: the client's version is checked (another one gets
//   Goodbye{ENOTSUP} with the text of docs/protocol.md § 4), its instance
//   found or added (dedup.c), the heartbeat interval agreed (the smaller
//   of ours and the client's nonzero preference, applied to the
//   connection) and our Hello sent with the method table.
//
// * References. A session is held by: its connection while up (dropped in
//   down), each entry, each armed session timer, each delayed reply, and a
//   walker (server close). The last unref never frees on the spot: it
//   posts the session's reap timer (delay 0) and the timer thread frees
//   the connection (which waits until its down callback has returned) and
//   the session, then tells the server. So nothing frees a connection from
//   inside its own callback, and aa_server_stop can wait for "no session
//   left" alone.
//
// * Memory: the session's decode arena grows to what the client's frames
//   needed (up to ARENA_BYTES; larger frames spill), so an idle session
//   does not hold a 16 KiB buffer.
//
// * Client gone (down, or the client's Goodbye): the session is marked
//   DOWN (or CLOSING) under ss->mtx and every real op it finds is
//   cancelled (call.c); their Completes are dropped.
#include <stdio.h>
#include <string.h>

#include "server_impl.h"

static void
session_destroy(session *ss)
{
	aa_server *s = ss->s;
	aai_conn_free(ss->conn); // waits until its down callback returned
	aai_wire_arena_fini(&ss->arena);
	aai_idmap_fini(&ss->ops);
	aai_mtx_fini(&ss->mtx);
	aai_free(ss);
	aai_live_dec(AA_LIVE_SERVER);

	aai_mtx_lock(&s->mtx);
	if (--s->nsessions == 0) {
		aai_cv_broadcast(&s->cv);
	}
	aai_mtx_unlock(&s->mtx);
	// s may be gone from here on (aa_server_stop returned).
}

static void
on_reap(void *arg)
{
	session *ss = arg;
	AAI_CB_ENTER(AAI_CB_SERVER, ss->s);
	session *unlinked = ss;
	aa_server *s = ss->s;
	aai_mtx_lock(&s->mtx);
	if (ss->prev != NULL) {
		ss->prev->next = ss->next;
	} else {
		s->sessions = ss->next;
	}
	if (ss->next != NULL) {
		ss->next->prev = ss->prev;
	}
	aai_mtx_unlock(&s->mtx);
	AAI_CB_LEAVE(AAI_CB_SERVER);
	session_destroy(unlinked);
}

void
aai_session_unref(session *ss)
{
	aai_mtx_lock(&ss->mtx);
	bool last = --ss->refs == 0;
	aai_mtx_unlock(&ss->mtx);
	if (!last) {
		return;
	}
	// Free on the timer thread: never inside the connection's own
	// callback, and never on a thread that a caller may be waiting for.
	aa_timer_init(&ss->reap_timer, on_reap, ss);
	if (aa_timer_start(&ss->reap_timer, ss->s->tq, 0) != 0) {
		on_reap(ss); // only while the queue is freed: cannot happen
	}
}

static void
on_linger(void *arg)
{
	session *ss = arg;
	AAI_CB_ENTER(AAI_CB_SERVER, ss->s);
	aai_mtx_lock(&ss->mtx);
	ss->linger_armed = false;
	aai_mtx_unlock(&ss->mtx);
	aai_conn_close(ss->conn);
	aai_session_unref(ss);
	AAI_CB_LEAVE(AAI_CB_SERVER);
}

static void
on_handshake_timeout(void *arg)
{
	session *ss = arg;
	AAI_CB_ENTER(AAI_CB_SERVER, ss->s);
	aai_mtx_lock(&ss->mtx);
	ss->hs_armed = false;
	bool close = ss->state == SS_HANDSHAKE;
	aai_mtx_unlock(&ss->mtx);
	if (close) {
		aai_srv_log(ss->s, AA_SEV_PROTOCOL_ERROR, ss->conn_id, NULL,
		            AA_ETIMEDOUT,
		            "no hello within the handshake timeout");
		aai_conn_close(ss->conn);
	}
	aai_session_unref(ss);
	AAI_CB_LEAVE(AAI_CB_SERVER);
}

// disarm cancels one of the session's timers if armed (flag under
// ss->mtx), dropping the reference it held if it will not run.
static void
disarm(session *ss, aa_timer *t, bool *armed)
{
	aai_mtx_lock(&ss->mtx);
	bool was = *armed;
	aai_mtx_unlock(&ss->mtx);
	if (was && aa_timer_cancel(t) == 0) {
		aai_mtx_lock(&ss->mtx);
		*armed = false;
		aai_mtx_unlock(&ss->mtx);
		aai_session_unref(ss);
	}
}

// goodbye_locked sends Goodbye(reason) unless the session is past it, and
// arms the linger that closes the connection. Expects ss->mtx. Returns
// false when the session was already closing or down.
bool
aai_session_goodbye_locked(session *ss, int reason, const char *why)
{
	if (ss->state != SS_HANDSHAKE && ss->state != SS_READY) {
		return false;
	}
	aai_wire_msg m;
	aai_wire_goodbye(&m, (uint32_t)reason, why);
	(void)aai_wire_send(ss->conn, &m, ss->s->max_msg);
	ss->state = SS_CLOSING;
	aa_timer_init(&ss->linger_timer, on_linger, ss);
	if (aa_timer_start(&ss->linger_timer, ss->s->tq, GOODBYE_LINGER_MS) ==
	    0) {
		ss->linger_armed = true;
		ss->refs++;
	}
	return true;
}

static void
protocol_error(session *ss, int err, const char *why)
{
	aa_server *s = ss->s;
	aai_count(&s->st.protocol_errors);
	aai_srv_log(s, AA_SEV_PROTOCOL_ERROR, ss->conn_id, NULL, err, why);
	aai_mtx_lock(&ss->mtx);
	bool sent = aai_session_goodbye_locked(ss, err, why);
	aai_mtx_unlock(&ss->mtx);
	if (!sent) {
		aai_conn_close(ss->conn);
	}
}

static void
on_hello(session *ss, const aai_wire_hello *h)
{
	aa_server *s = ss->s;
	if (h->role != AAI_WIRE_ROLE_CLIENT) {
		protocol_error(ss, AA_EPROTO, "hello from a server");
		return;
	}
	if (h->version != AAI_WIRE_VERSION) {
		// docs/protocol.md § 4 gives this text exactly.
		char why[80];
		snprintf(why, sizeof(why),
		         "protocol version %u not supported; server speaks %d",
		         (unsigned)h->version, AAI_WIRE_VERSION);
		aai_count(&s->st.protocol_errors);
		aai_srv_log(s, AA_SEV_PROTOCOL_ERROR, ss->conn_id, NULL,
		            AA_ENOTSUP, why);
		aai_mtx_lock(&ss->mtx);
		(void)aai_session_goodbye_locked(ss, AA_ENOTSUP, why);
		aai_mtx_unlock(&ss->mtx);
		return;
	}
	disarm(ss, &ss->hs_timer, &ss->hs_armed);

	aai_mtx_lock(&s->mtx);
	instance *inst = aai_instance_get(s, h->instance_id);
	aai_mtx_unlock(&s->mtx);
	if (inst == NULL) {
		aai_mtx_lock(&ss->mtx);
		(void)aai_session_goodbye_locked(ss, AA_ENOMEM,
		                                 "out of memory");
		aai_mtx_unlock(&ss->mtx);
		return;
	}
	ss->inst = inst;
	ss->base = atomic_load(&inst->high);
	ss->send_max =
	    h->max_msg_size < s->max_msg ? h->max_msg_size : s->max_msg;

	// The interval both sides use: ours, or the client's nonzero
	// preference if smaller (ours off keeps it off); silence is 3 of
	// them unless dead_after_ms was configured.
	int hb = s->heartbeat_ms;
	if (hb > 0 && h->heartbeat_ms > 0 && h->heartbeat_ms < (uint32_t)hb) {
		hb = (int)h->heartbeat_ms;
	}
	aai_conn_set_heartbeat(ss->conn, hb,
	                       s->dead_after_set ? s->dead_after_ms : 3 * hb);

	aai_wire_msg m;
	aai_wire_hello_server(&m, ss->conn_id, (uint32_t)s->max_msg,
	                      s->max_pending, (uint32_t)hb, s->wire_methods,
	                      s->nmethods);
	aai_mtx_lock(&ss->mtx);
	bool ok = ss->state == SS_HANDSHAKE;
	if (ok) {
		// The Hello goes out with our limit: a client that cannot take
		// the method table closes with AA_EMSGSIZE (protocol § 4).
		(void)aai_wire_send(ss->conn, &m, s->max_msg);
		ss->state = SS_READY;
		ss->connected = true;
	}
	aai_mtx_unlock(&ss->mtx);
	if (ok) {
		aai_count(&s->st.clients);
		aai_srv_log(s, AA_SEV_CONNECTED, ss->conn_id, NULL, 0, NULL);
	}
}

static void
on_goodbye(session *ss, const aai_wire_msg *m)
{
	aa_server *s = ss->s;
	aai_mtx_lock(&ss->mtx);
	if (ss->state == SS_HANDSHAKE || ss->state == SS_READY) {
		ss->state = SS_CLOSING; // the client leaves: send nothing
	}
	aai_mtx_unlock(&ss->mtx);
	aai_call_cancel_all(ss, &s->st.orphaned);
	aai_conn_close(ss->conn);
}

static void
on_frame(void *arg, aai_conn *c, const uint8_t *data, size_t len)
{
	session *ss = arg;
	aa_server *s = ss->s;
	AAI_CB_ENTER(AAI_CB_SERVER, s);
	aai_mtx_lock(&ss->mtx);
	ss_state state = ss->state;
	aai_mtx_unlock(&ss->mtx);
	if (state == SS_CLOSING || state == SS_DOWN) {
		AAI_CB_LEAVE(
		    AAI_CB_SERVER); // after a Goodbye either way: ignore
		return;
	}
	aai_wire_msg m;
	const char *why = "malformed frame";
	int rv = aai_wire_decode(&m, &why, &ss->arena, data, len, s->max_msg);
	if (rv != 0) {
		protocol_error(ss, rv == AA_EMSGSIZE ? AA_EMSGSIZE : AA_EPROTO,
		               why);
		AAI_CB_LEAVE(AAI_CB_SERVER);
		return;
	}
	if (state == SS_HANDSHAKE) {
		if (m.kind == AAI_WIRE_HELLO) {
			on_hello(ss, &m.hello);
		} else if (m.kind == AAI_WIRE_GOODBYE) {
			on_goodbye(ss, &m);
		} else {
			protocol_error(ss, AA_EPROTO,
			               "first message is not a hello");
		}
		AAI_CB_LEAVE(AAI_CB_SERVER);
		return;
	}
	switch (m.kind) {
	case AAI_WIRE_START:
		// The deadline counts from the frame's arrival; the clock is
		// read only when there is one (a read costs ~90 ns here).
		aai_call_start(ss, &m,
		               m.start.deadline_ms > 0 ? aa_clock_us() : 0);
		break;
	case AAI_WIRE_CANCEL:
		aai_call_cancel(ss, &m);
		break;
	case AAI_WIRE_HEARTBEAT:
		break; // the transport noted that the client is alive
	case AAI_WIRE_GOODBYE:
		on_goodbye(ss, &m);
		break;
	case AAI_WIRE_HELLO:
		protocol_error(ss, AA_EPROTO, "a second hello");
		break;
	case AAI_WIRE_COMPLETE:
		protocol_error(ss, AA_EPROTO, "a complete from a client");
		break;
	case AAI_WIRE_PROGRESS:
		protocol_error(ss, AA_EPROTO, "a progress from a client");
		break;
	default:
		protocol_error(ss, AA_EPROTO, "unexpected message kind");
		break;
	}
	AAI_CB_LEAVE(AAI_CB_SERVER);
}

// on_oversize: a frame header claimed more than our maximum message size;
// the transport closes the connection right after, and the Goodbye sent
// here leaves before that, best effort (docs/protocol.md § 2).
static void
on_oversize(void *arg, aai_conn *c, size_t len)
{
	session *ss = arg;
	AAI_CB_ENTER(AAI_CB_SERVER, ss->s);
	protocol_error(ss, AA_EMSGSIZE,
	               "frame larger than the maximum message size");
	AAI_CB_LEAVE(AAI_CB_SERVER);
}

static void
on_down(void *arg, aai_conn *c, int err)
{
	session *ss = arg;
	aa_server *s = ss->s;
	AAI_CB_ENTER(AAI_CB_SERVER, s);
	aai_mtx_lock(&ss->mtx);
	ss->state = SS_DOWN;
	bool was_connected = ss->connected;
	ss->connected = false;
	aai_mtx_unlock(&ss->mtx);
	disarm(ss, &ss->hs_timer, &ss->hs_armed);
	disarm(ss, &ss->linger_timer, &ss->linger_armed);
	if (was_connected) {
		atomic_fetch_sub(&s->st.clients, 1);
	}
	if (ss->inst != NULL) {
		// No Start of this connection can come any more.
		aai_mtx_lock(&s->mtx);
		aai_instance_left(s, ss->inst);
		aai_mtx_unlock(&s->mtx);
	}
	aai_srv_log(s, AA_SEV_CLIENT_GONE, ss->conn_id, NULL, err,
	            aa_strerror(err));
	aai_call_cancel_all(ss, &s->st.orphaned);
	aai_session_unref(ss); // the connection's reference
	AAI_CB_LEAVE(AAI_CB_SERVER);
}

void
aai_session_accept(void *arg, aai_conn *c)
{
	aa_server *s = arg;
	AAI_CB_ENTER(AAI_CB_SERVER, s);
	session *ss = aai_zalloc(sizeof(*ss));
	if (ss != NULL && aai_idmap_init(&ss->ops, OP_BUCKETS_MIN) != 0) {
		aai_free(ss);
		ss = NULL;
	}
	if (ss != NULL) {
		ss->s = s;
		ss->conn = c;
		ss->conn_id = aai_conn_id(c);
		ss->refs = 2; // the connection's and the handshake timer's
		ss->state = SS_HANDSHAKE;
		ss->send_max = s->max_msg;
		aai_mtx_init(&ss->mtx);
		aai_wire_arena_init_growing(&ss->arena, ARENA_BYTES);
		aa_timer_init(&ss->hs_timer, on_handshake_timeout, ss);
	}
	aai_mtx_lock(&s->mtx);
	bool ok = ss != NULL && !s->closed;
	if (ok) {
		ss->next = s->sessions;
		if (s->sessions != NULL) {
			s->sessions->prev = ss;
		}
		s->sessions = ss;
		s->nsessions++;
		aai_live_inc(AA_LIVE_SERVER);
		// Armed under s->mtx: close cannot walk it in between.
		ss->hs_armed = aa_timer_start(&ss->hs_timer, s->tq,
		                              HANDSHAKE_TIMEOUT_MS) == 0;
		if (!ss->hs_armed) {
			ss->refs--;
		}
	}
	aai_mtx_unlock(&s->mtx);
	if (!ok) {
		if (ss != NULL) {
			aai_wire_arena_fini(&ss->arena);
			aai_mtx_fini(&ss->mtx);
			aai_idmap_fini(&ss->ops);
			aai_free(ss);
		}
		aai_conn_free(c); // not started: freed at once
		AAI_CB_LEAVE(AAI_CB_SERVER);
		return;
	}
	static const aai_conn_cbs cbs = {
	    .frame = on_frame,
	    .oversize = on_oversize,
	    .down = on_down,
	};
	aai_conn_start(c, &cbs, ss);
	AAI_CB_LEAVE(AAI_CB_SERVER);
}
