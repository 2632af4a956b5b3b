// link.c: the client's connection (a `clink`): the handshake, the frames
// that arrive, protocol errors, loss, and reconnecting.
//
// Design notes.
//
// States of a link: connecting (aai_link_connect dialled it, sent our
// Hello and waits for the server's, holding a pin so that nobody frees
// it), published (c->link, only after the server's Hello: nothing
// but our Hello may go out before that), down (its down callback ran
// once, on its receive thread, after its last frame), dead (on c->dead,
// freed by aai_link_free_dead from outside its callbacks, never while a
// connect still waits on it).
//
// The server's Hello gives the method table (it only grows across
// reconnects, so names handed to ops stay valid as long as the client),
// the limits, the connection id and the heartbeat interval both sides use
// (applied to the connection at once). A Hello of another version is
// refused with ENOTSUP: Goodbye{ENOTSUP} is queued and the link ends with
// its batch (aai_conn_end_batch: the batch's queued frames are written
// first); the opener waits for that down, so aa_client_open cannot return
// and free the link before the Goodbye was written. A frame that does not
// decode, a Start or Cancel from the server, a second Hello, or an
// oversized length prefix is a protocol error: a Goodbye (best effort, the
// same way), the end of the link, and the link's ops end with EPROTO or
// EMSGSIZE. The server's Goodbye: its reason and
// message end the link's ops (0 and ECLOSED read as EUNAVAIL).
//
// Reconnect (opts.reconnect): a call that finds no link starts one
// reconnect thread (aai_link_reconnect) and queues; the flusher leaves
// queued ops alone while `reconnecting`, and the reconnect flushes when
// its handshake is done, or fails them with its error (down_err). No
// caller ever waits for a dial; stop waits for the reconnect thread
// (`reconnectors`), which may take up to connect_timeout_ms.
//
// Memory: the link's decode arena grows to what the server's frames
// needed (up to LINK_ARENA_MAX, larger ones spill), so an idle link holds
// a few hundred bytes for it rather than a fixed 8 KiB buffer; the
// server's Goodbye text is copied only when one comes.
//
// Loss (down): every op in the map that was sent on this link ends ERROR
// (the Goodbye's reason, a protocol error's, or ECONNLOST) with settlement
// unknown; queued ones are left to a flusher, which finds the link gone.
//
// Threads and locks: frames and down run on the link's receive thread,
// serialised, marked as c's callbacks; connect runs on the caller's
// thread and waits on c->cv. Nothing blocking and no callback under the
// client's mutex; transport close and free run outside it.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client_impl.h"

static void link_protocol_error(clink *l, int err, const char *why);

// add_method appends a method to the client's table, growing it; on
// ENOMEM the method is left out (a call to it then fails AA_ENOENT).
// Expects the client's lock.
static void
add_method(aa_client *c, const char *name, unsigned types, uint64_t fp)
{
	if (c->n_methods == c->methods_cap) {
		size_t cap = c->methods_cap ? 2 * c->methods_cap : 16;
		method *grown = aai_alloc(cap * sizeof(*grown));
		if (grown == NULL) {
			return;
		}
		if (c->n_methods > 0) {
			memcpy(grown, c->methods,
			       c->n_methods * sizeof(*grown));
		}
		aai_free(c->methods);
		c->methods = grown;
		c->methods_cap = cap;
	}
	char *copy = aai_strdup(name);
	if (copy != NULL) {
		c->methods[c->n_methods++] = (method){copy, types, fp};
	}
}

static void
on_hello(aa_client *c, clink *l, const aai_wire_msg *m)
{
	const aai_wire_hello *h = &m->hello;
	if (h->role != AAI_WIRE_ROLE_SERVER || l->hello) {
		link_protocol_error(l, AA_EPROTO,
		                    l->hello ? "a second hello"
		                             : "hello from a client");
		return;
	}
	if (h->version != AAI_WIRE_VERSION) {
		// The attempt fails with ENOTSUP; the text is the server's
		// mirror (docs/protocol.md § 4).
		char msg[96];
		snprintf(msg, sizeof(msg),
		         "protocol version %u not supported; client speaks %d",
		         (unsigned)h->version, AAI_WIRE_VERSION);
		// The Goodbye goes out when this batch ends, and only then
		// does the link go down (aai_conn_end_batch): the opener,
		// which waits for the link's down, cannot close the link
		// before the Goodbye was written.
		aai_wire_msg bye;
		aai_wire_goodbye(&bye, AA_ENOTSUP, msg);
		aai_mtx_lock(&c->mtx);
		c->down_err = AA_ENOTSUP;
		if (aai_wire_send(l->conn, &bye, 0) == 0) {
			c->st.sent_other++;
		}
		l->refused = AA_ENOTSUP;
		aai_free(l->goodbye_msg);
		l->goodbye_msg = aai_strdup(msg); // NULL on ENOMEM: no text
		aai_mtx_unlock(&c->mtx);
		aai_conn_end_batch(l->conn, AA_ENOTSUP);
		return;
	}
	// Both sides use the server's heartbeat interval (0: off); silence
	// is 3 of them unless dead_after_ms was given.
	int hb = (int)h->heartbeat_ms;
	aai_conn_set_heartbeat(l->conn, hb,
	                       hb == 0             ? 0
	                       : c->dead_after_set ? c->opts.dead_after_ms
	                                           : 3 * hb);
	aai_mtx_lock(&c->mtx);
	c->st.recv_other++;
	// The method table only grows across reconnects: names handed to
	// ops (cop->method) stay valid as long as the client.
	for (size_t i = 0; i < h->n_methods; i++) {
		method *old = aai_client_find_method(c, h->methods[i].name);
		if (old != NULL) {
			old->types = h->methods[i].cancel_types;
			old->fingerprint = h->methods[i].fingerprint;
		} else {
			add_method(c, h->methods[i].name,
			           h->methods[i].cancel_types,
			           h->methods[i].fingerprint);
		}
	}
	c->server_max_pending = h->max_pending;
	c->server_max_msg = h->max_msg_size;
	l->conn_id = h->conn_id;
	l->hello = true;
	aai_cv_broadcast(&c->cv);
	aai_mtx_unlock(&c->mtx);
}

// link_protocol_error ends a link whose server broke the protocol (§ 9):
// a Goodbye with the reason, best effort, then the end; its ops end
// with err.
static void
link_protocol_error(clink *l, int err, const char *why)
{
	aa_client *c = l->c;
	aai_wire_msg bye;
	aai_wire_goodbye(&bye, (uint32_t)err, why);
	aai_mtx_lock(&c->mtx);
	c->down_err = err;
	if (aai_wire_send(l->conn, &bye, 0) == 0) {
		c->st.sent_other++;
	}
	aai_mtx_unlock(&c->mtx);
	aai_conn_end_batch(l->conn, err); // the Goodbye leaves first
}

static void
clink_frame(void *arg, aai_conn *conn, const uint8_t *data, size_t len)
{
	clink *l = arg;
	aa_client *c = l->c;
	aai_wire_msg m;
	const char *why;

	AAI_CB_ENTER(AAI_CB_CLIENT, c);
	int rv = aai_wire_decode(&m, &why, &l->arena, data, len,
	                         c->opts.max_msg_size);
	if (rv != 0) {
		// A server that speaks nonsense is a lost server.
		link_protocol_error(l, rv, why);
		AAI_CB_LEAVE(AAI_CB_CLIENT);
		return;
	}
	switch (m.kind) {
	case AAI_WIRE_COMPLETE:
		aai_cop_on_complete(c, &m);
		break;
	case AAI_WIRE_PROGRESS:
		aai_cop_on_progress(c, &m);
		break;
	case AAI_WIRE_HELLO:
		on_hello(c, l, &m);
		break;
	case AAI_WIRE_GOODBYE:
		aai_mtx_lock(&c->mtx);
		c->st.recv_other++;
		// 0 and ECLOSED read as EUNAVAIL (protocol § 10).
		l->goodbye =
		    m.goodbye.reason != 0 && m.goodbye.reason != AA_ECLOSED
		        ? (int)m.goodbye.reason
		        : AA_EUNAVAIL;
		// Kept only when one comes (it would cost every link 1 KiB).
		aai_free(l->goodbye_msg);
		l->goodbye_msg =
		    m.goodbye.message != NULL && m.goodbye.message[0] != '\0'
		        ? aai_strdup(m.goodbye.message)
		        : NULL;
		aai_mtx_unlock(&c->mtx);
		aai_conn_close(conn); // the server is leaving: so do we
		break;
	case AAI_WIRE_HEARTBEAT:
		aai_mtx_lock(&c->mtx);
		c->st.recv_other++;
		aai_mtx_unlock(&c->mtx);
		break;
	default: // a Start or a Cancel: not a server's to send
		link_protocol_error(l, AA_EPROTO,
		                    "a client-to-server message from the "
		                    "server");
		break;
	}
	AAI_CB_LEAVE(AAI_CB_CLIENT);
}

// link_oversize: the server's frame header claimed more than our maximum
// message size; the transport closes the link right after.
static void
link_oversize(void *arg, aai_conn *conn, size_t len)
{
	link_protocol_error(arg, AA_EMSGSIZE,
	                    "frame larger than the maximum message size");
}

// take_sent takes a sent op out of the map onto the list *arg (through
// qnext: a sent op is in no queue). Expects the client's lock.
static bool
take_sent(aai_idmap_node *node, void *arg)
{
	cop **lost = arg;
	cop *p = AAI_CONTAINER(node, cop, node);
	if (p->state == COP_QUEUED) {
		return false;
	}
	p->state = COP_DONE;
	p->qnext = *lost;
	*lost = p;
	return true;
}

// clink_down ends every op the link carried. Runs once, on the link's
// receive thread, after its last frame.
static void
clink_down(void *arg, aai_conn *conn, int err)
{
	clink *l = arg;
	aa_client *c = l->c;
	cop *lost = NULL;
	int why;

	AAI_CB_ENTER(AAI_CB_CLIENT, c);
	aai_mtx_lock(&c->mtx);
	// The server's Goodbye reason reaches the ops it ends (protocol
	// § 10); a bad frame we found ends them with EPROTO or EMSGSIZE.
	why = l->goodbye != 0   ? l->goodbye
	      : l->refused != 0 ? l->refused
	      : c->down_err == AA_EPROTO || c->down_err == AA_EMSGSIZE
	          ? c->down_err
	      : err == AA_ELIMIT ? AA_ELIMIT // the server did not read
	                         : AA_ECONNLOST;
	const char *why_msg = l->goodbye_msg != NULL ? l->goodbye_msg
	                      : why == AA_EUNAVAIL   ? "server shut down"
	                                             : "connection lost";
	if (err == AA_ELIMIT) {
		c->st.send_limit_drops++;
	}
	if (c->link == l) {
		c->link = NULL;
		c->conn_id = 0;
		c->down_err = why;
		// Every op in the map was sent on this link (queued ones
		// wait for a flusher, which finds the link gone).
		aai_idmap_walk(&c->ops, take_sent, &lost);
	}
	aai_cv_broadcast(&c->cv);
	aai_mtx_unlock(&c->mtx);

	for (cop *p = lost, *next; p != NULL; p = next) {
		next = p->qnext;
		aai_cop_fail(p, why, AA_SETTLE_UNKNOWN, why_msg);
		aai_cop_retire(p);
	}
	// Queued ops: a flusher finds the link gone and ends them.
	aai_submit_flush(c);
	// The last touch of the client: after this, stop may return. The
	// link itself is freed from outside its callbacks
	// (aai_link_free_dead).
	AAI_CB_LEAVE(AAI_CB_CLIENT);
	aai_mtx_lock(&c->mtx);
	l->next_dead = c->dead;
	l->down = true;
	c->dead = l;
	c->live_links--;
	aai_cv_broadcast(&c->cv);
	aai_mtx_unlock(&c->mtx);
}

// ---- Connecting ----

// free_dead_links frees links that went down: transport free waits until
// their callbacks have returned. Never called from a link's callback.
void
aai_link_free_dead(aa_client *c)
{
	// Links a connect_clink still waits on stay on the list.
	clink *l = NULL;
	aai_mtx_lock(&c->mtx);
	for (clink **pp = &c->dead; *pp != NULL;) {
		clink *d = *pp;
		if (d->pins > 0) {
			pp = &d->next_dead;
		} else {
			*pp = d->next_dead;
			d->next_dead = l;
			l = d;
		}
	}
	aai_mtx_unlock(&c->mtx);
	while (l != NULL) {
		clink *next = l->next_dead;
		aai_conn_free(l->conn);
		aai_wire_arena_fini(&l->arena);
		aai_free(l->goodbye_msg);
		aai_free(l);
		aai_live_dec(AA_LIVE_CLIENT);
		l = next;
	}
}

int
aai_link_connect(aa_client *c)
{
	aai_conn *conn;
	clink *l;
	int rv;
	aai_wire_msg hello;

	if (!aai_cb_inside(AAI_CB_CLIENT, c)) {
		aai_link_free_dead(c);
	}
	if ((rv = aai_dial(&conn, c->url, &c->tp)) != 0) {
		return rv;
	}
	if ((l = aai_zalloc(sizeof(*l))) == NULL) {
		aai_conn_free(conn);
		return AA_ENOMEM;
	}
	aai_live_inc(AA_LIVE_CLIENT);
	l->c = c;
	l->conn = conn;
	l->pins = 1; // this connect's
	aai_wire_arena_init_growing(&l->arena, LINK_ARENA_MAX);

	aai_mtx_lock(&c->mtx);
	if (c->closed) {
		aai_mtx_unlock(&c->mtx);
		aai_conn_free(conn);
		aai_wire_arena_fini(&l->arena);
		aai_free(l->goodbye_msg);
		aai_free(l);
		aai_live_dec(AA_LIVE_CLIENT);
		return AA_ECLOSED;
	}
	c->live_links++; // its down callback runs once, whatever happens
	aai_mtx_unlock(&c->mtx);

	// The link is published (c->link) only after the server's Hello:
	// nothing but our Hello may go out on it before that.
	static const aai_conn_cbs cbs = {
	    .frame = clink_frame,
	    .oversize = link_oversize,
	    .down = clink_down,
	};
	aai_conn_start(conn, &cbs, l);
	aai_wire_hello_client(&hello, c->instance_id,
	                      (uint32_t)c->opts.max_msg_size,
	                      (uint32_t)c->opts.heartbeat_ms);
	aai_wire_send(conn, &hello, 0);

	// Wait for the server's Hello, its goodbye, or the link going down.
	uint64_t until =
	    aa_clock_us() + (uint64_t)c->opts.connect_timeout_ms * 1000u;
	aai_mtx_lock(&c->mtx);
	c->st.sent_other++;
	while (!l->hello && l->goodbye == 0 && !l->down) {
		uint64_t now = aa_clock_us();
		if (now >= until) {
			break;
		}
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t left = until - now;
		ts.tv_sec += (time_t)(left / 1000000u);
		ts.tv_nsec += (long)(left % 1000000u) * 1000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&c->cv, &c->mtx, &ts);
	}
	if (l->hello && !l->down && l->goodbye == 0 && !c->closed &&
	    c->link == NULL) {
		l->pins--;
		c->link = l;
		c->link_gen++;
		c->conn_id = l->conn_id;
		c->down_err = 0;
		c->st.connects++;
		aai_mtx_unlock(&c->mtx);
		return 0;
	}
	// Not ours to use: another thread connected meanwhile (use its
	// link), or it failed. While it is pinned nobody frees it,
	// so closing it here is safe even if it went down already.
	rv = (l->hello && !l->down && l->goodbye == 0 && !c->closed) ? 0
	     : c->closed       ? AA_ECLOSED
	     : l->refused != 0 ? l->refused
	     : l->goodbye != 0 ? l->goodbye
	     : l->down         ? AA_ECONNLOST
	                       : AA_ETIMEDOUT;
	aai_mtx_unlock(&c->mtx);
	aai_conn_close(conn); // clink_down cleans up
	aai_mtx_lock(&c->mtx);
	l->pins--;
	aai_mtx_unlock(&c->mtx);
	return rv;
}

// reconnect_main connects again on a thread of its own, then sends what
// queued meanwhile (or fails it with the connect's error).
static void *
reconnect_main(void *arg)
{
	aa_client *c = arg;
	AAI_CHECKPOINT("client.reconnect", c);
	int rv = aai_link_connect(c);
	aai_mtx_lock(&c->mtx);
	c->reconnecting = false;
	if (rv != 0) {
		c->down_err = rv; // the queued calls fail with it
	}
	aai_mtx_unlock(&c->mtx);
	aai_submit_flush(c);
	aai_mtx_lock(&c->mtx);
	c->reconnectors--;
	aai_cv_broadcast(&c->cv);
	aai_mtx_unlock(&c->mtx); // the last touch of c
	return NULL;
}

int
aai_link_reconnect(aa_client *c)
{
	if (c->reconnecting) {
		return 0;
	}
	pthread_t t;
	pthread_attr_t attr;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	c->reconnecting = true;
	c->reconnectors++;
	int rv = pthread_create(&t, &attr, reconnect_main, c);
	pthread_attr_destroy(&attr);
	if (rv != 0) {
		c->reconnecting = false;
		c->reconnectors--;
		return AA_ESYSTEM;
	}
	return 0;
}
