// call.c: one call on the server: the Start that makes the real op, the
// Cancel and Progress it gets, its deadline, and its one Complete.
//
// Design notes.
//
// * An entry is the server's record of one call, in its session's map
//   from the Start being accepted until the op's handler logged its
//   outcome. Its phase
//   (server_impl.h, under ss->mtx):
//     STARTING  the method runs (op NULL, in the map: a Cancel cannot come
//               meanwhile, frames being serialised on the receive thread)
//       -> REFUSED   the method refused: out of the map, rejected
//       -> RUNNING   the op runs (op set, in the map, handlers set)
//            -> FINISHED  the handler ran: in one locked step it marks
//                         FINISHED and sends the Complete (or, with a
//                         reply delay, schedules it); it logs the outcome,
//                         then takes the entry out of the map, so that a
//                         Cancel meanwhile finds it and is logged after
//                         the outcome (the server's log of an
//                         already-complete op: success, then the late
//                         Cancel).
//   Beside the phase, three small state machines, each an enum: the
//   client's Cancel (NONE -> WHILE_RUNNING, or NONE -> AFTER_FINISH when
//   the op had finished: nothing more is done), the server's own cancel
//   (NONE -> CANCELLED by close, orphaning, or a deadline after the
//   client's Cancel; NONE -> TIMED_OUT by the deadline alone; once), and
//   the deadline timer (NONE -> ARMED -> FIRED, or ARMED until the handler
//   disarms it). An entry is held by the map until the op's handler ran,
//   by a running deadline function and by a walker that cancels it; the
//   last unref drops the op and the session.
//
// * Races and who wins.
//   - Cancel vs real completion: decided by the op (its mutex). A Cancel
//     that finds the entry RUNNING with the op still STARTED marks
//     WHILE_RUNNING and calls aa_op_cancel; if the op finished just then
//     that is AA_EALREADY (the op was told while it ran: in-flight,
//     completed anyway). One that finds the op final already (entry
//     RUNNING or FINISHED) marks AFTER_FINISH and does nothing more: the
//     handler logs it "after completion" once it has logged the outcome;
//     one that finds no entry (outcome logged) is logged "after
//     completion" at once when the id was accepted once. Either way
//     exactly one Complete goes out, with the op's real outcome and
//     cancel_received (WHILE_RUNNING); COMPLETED after a Cancel counts as
//     wasted and runs the compensation hook.
//   - Client gone vs completion: down marks the session DOWN under ss->mtx
//     and cancels every op it finds in the map; the handler sends only
//     when the session is READY in the same locked step that takes the
//     entry out. A Complete queued before down is lost with the connection
//     (REPLY_SENT); one after is REPLY_DROPPED.
//   - Deadline vs completion: the deadline function marks the timer FIRED
//     under ss->mtx before it cancels. The handler marks finished in its
//     locked step; if the deadline had not fired it disarms the timer with
//     aa_timer_cancel after dropping the lock (waiting for a deadline
//     function that is just finding "finished"); if it had fired, it does
//     not wait (the deadline function may be waiting for this very
//     handler inside aa_op_cancel) and the entry's reference count keeps
//     the entry alive for the deadline function. A Complete reports
//     CANCELED with AA_ETIMEDOUT when the deadline's cancel took.
//
// * Memory: an entry is allocated from the server's pool with the deadline
//   timer only when the Start carries a deadline (aai_entry_size); its
//   small states are bytes. The timer is touched only when dl is ARMED or
//   FIRED, which needs a deadline.
//
// * Codes of a Complete: CANCELED says whose cancel it was (ECANCELED the
//   client's, ETIMEDOUT the deadline's, ESRVCANCEL the op's own); FAILED
//   with AA_EAPP carries the application's code in app_code.
#include <stdio.h>
#include <string.h>

#include "server_impl.h"

// types_ok says whether a method offering mask honours every type in req.
static bool
types_ok(unsigned mask, unsigned req)
{
	for (unsigned t = 1; t <= AA_CANCEL_TOTAL; t <<= 1) {
		if ((req & t) != 0 && !aa_cancel_supports(mask, t)) {
			return false;
		}
	}
	return true;
}

// ---- The session's table of calls (expects ss->mtx) ----

static entry *
entry_find(session *ss, uint64_t id)
{
	aai_idmap_node *n = aai_idmap_find(&ss->ops, id);
	return n != NULL ? AAI_CONTAINER(n, entry, node) : NULL;
}

static void
entry_table(session *ss, entry *e)
{
	e->node.id = e->call.op_id;
	(void)aai_idmap_add(&ss->ops, &e->node); // has buckets: cannot fail
}

static void
entry_untable(session *ss, entry *e)
{
	if (e->phase == E_STARTING || e->phase == E_RUNNING) {
		aai_idmap_remove(&ss->ops, &e->node);
	}
}

typedef struct walk_arg {
	entry *list;
	uint64_t n;
} walk_arg;

// take_for_cancel lists (with a reference) each real op that the server
// has not cancelled yet; a method still running is left to the Start path.
static bool
take_for_cancel(aai_idmap_node *node, void *arg)
{
	walk_arg *w = arg;
	entry *e = AAI_CONTAINER(node, entry, node);
	if (e->phase != E_RUNNING || e->srv_cancel != ES_NONE) {
		return false;
	}
	e->srv_cancel = ES_CANCELLED;
	e->refs++;
	e->wnext = w->list;
	w->list = e;
	w->n++;
	return false;
}

// ---- Entries ----

static void
entry_unref(entry *e)
{
	session *ss = e->ss;
	aai_mtx_lock(&ss->mtx);
	bool last = --e->refs == 0;
	aai_mtx_unlock(&ss->mtx);
	if (!last) {
		return;
	}
	if (e->op != NULL) {
		aa_op_unref(e->op);
	}
	const aa_allocator *a = aai_pool_allocator(ss->s->pool);
	a->free(a->ctx, e, aai_entry_size(e->call.deadline_ms));
	aai_session_unref(ss);
}

// cancel_all cancels every real op of ss not cancelled by the server yet
// (the weakest type each method honours; one that honours none runs to its
// end), adding how many it found to *counter (may be NULL) first. Not
// under any lock.
void
aai_call_cancel_all(session *ss, _Atomic uint64_t *counter)
{
	walk_arg w = {NULL, 0};
	aai_mtx_lock(&ss->mtx);
	aai_idmap_walk(&ss->ops, take_for_cancel, &w);
	aai_mtx_unlock(&ss->mtx);
	if (counter != NULL) {
		atomic_fetch_add(counter, w.n);
	}
	entry *list = w.list;
	while (list != NULL) {
		entry *e = list;
		list = e->wnext;
		aa_cancel_type t = aai_weakest(e->m->def.cancel_types);
		if (t != AA_CANCEL_NONE) {
			(void)aa_op_cancel(e->op, t);
		}
		entry_unref(e);
	}
}

static void
on_progress(aa_op *op, void *arg, const void *data, size_t len)
{
	entry *e = arg;
	session *ss = e->ss;
	AAI_CB_ENTER(AAI_CB_SERVER, ss->s);
	aai_wire_msg m;
	aai_wire_progress(&m, e->call.op_id, data, len);
	bool sent = false;
	aai_mtx_lock(&ss->mtx);
	// After a Cancel the client drops progress: save the bytes.
	if (ss->state == SS_READY && e->phase == E_RUNNING &&
	    e->cancel == EC_NONE) {
		sent = aai_wire_send(ss->conn, &m, ss->send_max) == 0;
	}
	aai_mtx_unlock(&ss->mtx);
	if (sent) {
		aai_count(&ss->s->st.progress_sent);
	}
	AAI_CB_LEAVE(AAI_CB_SERVER);
}

// A Complete held back by aa_server_opts.reply_delay_ms: encoded when the
// op finished, sent by the timer thread when the delay has passed (if the
// session is still READY then). It holds a session reference.
typedef struct delayed_reply {
	aa_timer timer;
	session *ss;
	uint64_t op_id;
	const char *method; // in the server's method table
	size_t len;
	uint8_t frame[];
} delayed_reply;

static void
on_delayed_reply(void *arg)
{
	delayed_reply *d = arg;
	session *ss = d->ss;
	aa_server *s = ss->s;
	AAI_CB_ENTER(AAI_CB_SERVER, s);
	aai_mtx_lock(&ss->mtx);
	int rv = ss->state == SS_READY
	             ? aai_conn_send(ss->conn, d->frame, d->len)
	             : AA_ECLOSED;
	aai_mtx_unlock(&ss->mtx);
	aai_count(rv == 0 ? &s->st.replies_sent : &s->st.replies_dropped);
	aai_srv_log_op(s, rv == 0 ? AA_SEV_REPLY_SENT : AA_SEV_REPLY_DROPPED,
	               ss->conn_id, d->op_id, d->method, rv, 0, NULL);
	aai_free(d);
	aai_session_unref(ss);
	AAI_CB_LEAVE(AAI_CB_SERVER);
}

// delay_reply encodes m and arms its delayed send. Expects ss->mtx (the
// state check and the session reference). 0, AA_EMSGSIZE (over the
// client's limit) or AA_ENOMEM.
static int
delay_reply(entry *e, const aai_wire_msg *m)
{
	session *ss = e->ss;
	size_t len;
	int rv = aai_wire_size(&len, m);
	if (rv != 0) {
		return rv;
	}
	if (len > ss->send_max) {
		return AA_EMSGSIZE;
	}
	delayed_reply *d = aai_alloc(sizeof(*d) + len);
	if (d == NULL) {
		return AA_ENOMEM;
	}
	(void)aai_wire_encode(&d->len, d->frame, len, m, 0);
	d->ss = ss;
	d->op_id = e->call.op_id;
	d->method = e->call.method;
	aa_timer_init(&d->timer, on_delayed_reply, d);
	if (aa_timer_start(&d->timer, ss->s->tq, ss->s->reply_delay_ms) != 0) {
		aai_free(d);
		return AA_ECLOSED;
	}
	ss->refs++;
	return 0;
}

// send_complete sends (or, with a reply delay, schedules) m for e. Expects
// ss->mtx; sends only while the session is READY.
static int
send_complete(entry *e, const aai_wire_msg *m)
{
	session *ss = e->ss;
	if (ss->state != SS_READY) {
		return AA_ECLOSED;
	}
	if (ss->s->reply_delay_ms > 0) {
		return delay_reply(e, m);
	}
	return aai_wire_send(ss->conn, m, ss->send_max);
}

// finish sends the Complete of e's op (forced: a server-made failure
// instead of the op's outcome), logs, compensates and drops the table's
// reference.
static void
finish(entry *e, int forced, const char *forced_msg)
{
	session *ss = e->ss;
	aa_server *s = ss->s;
	aa_op *op = e->op;
	aa_state st = forced != 0 ? AA_ERROR : aa_op_status(op);
	aai_wire_msg m;
	aa_server_event ev;
	int err = 0;
	int32_t app_code = 0;
	const char *msg = "";
	const void *payload = NULL;
	size_t plen = 0;

	AAI_CHECKPOINT("server.before_reply", op);

	// Step 1, one locked step: FINISHED (the entry stays in the map
	// until its outcome is logged, step 2), what the Complete says, the
	// send.
	aai_mtx_lock(&ss->mtx);
	e->phase = E_FINISHED;
	bool disarm_deadline = e->dl == ED_ARMED;
	bool cancel_received = e->cancel == EC_WHILE_RUNNING;
	bool client_cancelled = e->cancel != EC_NONE;
	bool timed_out = e->srv_cancel == ES_TIMED_OUT;
	switch (st) {
	case AA_COMPLETED:
		(void)aa_op_result(op, &payload, &plen);
		aai_wire_complete(&m, e->call.op_id, AAI_WIRE_COMPLETED, 0,
		                  NULL, payload, plen);
		ev = AA_SEV_COMPLETED;
		break;
	case AA_CANCELED:
		// Whose cancel it was: the client's, the deadline's, or the
		// server's own (the method cancelled itself).
		err = cancel_received ? AA_ECANCELED
		      : timed_out     ? AA_ETIMEDOUT
		                      : AA_ESRVCANCEL;
		aai_wire_complete(
		    &m, e->call.op_id, AAI_WIRE_CANCELED, (uint32_t)err,
		    timed_out ? "deadline passed" : NULL, NULL, 0);
		ev = AA_SEV_CANCELED;
		break;
	default:
		if (forced != 0) {
			err = forced;
			msg = forced_msg;
		} else {
			err = aa_op_error(op);
			msg = aa_op_error_msg(op);
			(void)aa_op_app_code(op, &app_code);
		}
		if (err <= 0 || err > AAI_WIRE_ERROR_MAX) {
			err = AA_EINTERNAL;
		}
		aai_wire_complete(&m, e->call.op_id, AAI_WIRE_FAILED,
		                  (uint32_t)err, msg, NULL, 0);
		m.complete.app_code = err == AA_EAPP ? app_code : 0;
		ev = AA_SEV_FAILED;
		break;
	}
	m.complete.cancel_received = cancel_received;
	// Counted before the send, so that a client holding the Complete
	// finds the counters up to date.
	atomic_fetch_sub(&s->st.pending, 1);
	if (ss->inst != NULL) {
		atomic_fetch_sub(&ss->inst->pending, 1);
	}
	aai_count(ev == AA_SEV_COMPLETED  ? &s->st.completed
	          : ev == AA_SEV_CANCELED ? &s->st.canceled
	                                  : &s->st.failed);
	int rv = send_complete(e, &m);
	bool too_big = rv == AA_EMSGSIZE;
	if (too_big) {
		aai_wire_complete(&m, e->call.op_id, AAI_WIRE_FAILED,
		                  AA_EMSGSIZE,
		                  "result larger than the client's "
		                  "maximum message size",
		                  NULL, 0);
		m.complete.cancel_received = cancel_received;
		rv = send_complete(e, &m);
	}
	bool delayed = rv == 0 && s->reply_delay_ms > 0;
	if (!delayed) {
		aai_count(rv == 0 ? &s->st.replies_sent
		                  : &s->st.replies_dropped);
	}
	// The result is not used: the client cancelled, or never gets it.
	bool wasted =
	    st == AA_COMPLETED && (client_cancelled || rv != 0 || too_big);
	if (wasted) {
		aai_count(&s->st.wasted);
	}
	aai_mtx_unlock(&ss->mtx);

	if (disarm_deadline) {
		// Waits only for a deadline function that is about to see
		// "finished"; one past that check never makes us wait.
		(void)aa_timer_cancel(&e->deadline);
	}
	aai_srv_log_op(s, ev, ss->conn_id, e->call.op_id, e->call.method, err,
	               app_code, msg);
	// Step 2: out of the map. A Cancel that came after the op had
	// finished (before step 1, or between the steps) is logged now, after
	// the outcome: the server's log says success, then the late Cancel.
	aai_mtx_lock(&ss->mtx);
	aai_idmap_remove(&ss->ops, &e->node);
	bool late_cancel = e->cancel == EC_AFTER_FINISH;
	aai_mtx_unlock(&ss->mtx);
	if (late_cancel) {
		aai_srv_log(s, AA_SEV_CANCEL_RECEIVED, ss->conn_id, e, 0,
		            "after completion: the op had finished");
	}
	if (!delayed) {
		aai_srv_log(s,
		            rv == 0 ? AA_SEV_REPLY_SENT : AA_SEV_REPLY_DROPPED,
		            ss->conn_id, e, rv, NULL);
	}
	if (wasted && e->m->def.compensate != NULL) {
		e->m->def.compensate(e->m->def.arg, &e->call, op);
		aai_srv_log(s, AA_SEV_COMPENSATED, ss->conn_id, e, 0, NULL);
	}
	entry_unref(e);
}

static void
on_done(aa_op *op, void *arg)
{
	entry *e = arg;
	AAI_CB_ENTER(AAI_CB_SERVER, e->ss->s);
	finish(e, 0, NULL);
	AAI_CB_LEAVE(AAI_CB_SERVER);
}

static void
on_deadline(void *arg)
{
	entry *e = arg;
	session *ss = e->ss;
	AAI_CB_ENTER(AAI_CB_SERVER, ss->s);
	aai_mtx_lock(&ss->mtx);
	if (e->phase == E_FINISHED) {
		// The handler is disarming us and waits for this return.
		aai_mtx_unlock(&ss->mtx);
		AAI_CB_LEAVE(AAI_CB_SERVER);
		return;
	}
	e->dl = ED_FIRED;
	bool cancel = e->srv_cancel == ES_NONE;
	if (cancel) {
		e->srv_cancel = e->cancel == EC_WHILE_RUNNING ? ES_CANCELLED
		                                              : ES_TIMED_OUT;
	}
	e->refs++;
	aai_mtx_unlock(&ss->mtx);
	aa_cancel_type t = aai_weakest(e->m->def.cancel_types);
	if (cancel && t != AA_CANCEL_NONE) {
		(void)aa_op_cancel(e->op, t);
	}
	entry_unref(e);
	AAI_CB_LEAVE(AAI_CB_SERVER);
}

static void
reject(session *ss, uint64_t op_id, const char *name, int err, const char *why)
{
	aa_server *s = ss->s;
	aai_wire_msg m;
	aai_wire_complete(&m, op_id, AAI_WIRE_REJECTED, (uint32_t)err, why,
	                  NULL, 0);
	aai_count(&s->st.rejected);
	aai_mtx_lock(&ss->mtx);
	int rv = ss->state == SS_READY
	             ? aai_wire_send(ss->conn, &m, ss->send_max)
	             : AA_ECLOSED;
	aai_mtx_unlock(&ss->mtx);
	if (s->log != NULL) {
		entry fake = {.call = {.op_id = op_id, .method = name}};
		aai_srv_log(s, AA_SEV_REJECTED, ss->conn_id, &fake, err, why);
		if (rv != 0) {
			aai_srv_log(s, AA_SEV_REPLY_DROPPED, ss->conn_id,
			            &fake, rv, NULL);
		}
	}
}

// The text a running method gave its rejection (aa_server_reject_reason):
// per thread, since a method runs on the receive thread that calls it.
static _Thread_local bool in_method;
static _Thread_local bool reject_text_set;
static _Thread_local char reject_text[AAI_WIRE_TEXT_MAX + 1];

void
aa_server_reject_reason(const char *text)
{
	if (in_method && text != NULL) {
		snprintf(reject_text, sizeof(reject_text), "%s", text);
		reject_text_set = true;
	}
}

void
aai_call_start(session *ss, const aai_wire_msg *m, uint64_t t0_us)
{
	aa_server *s = ss->s;
	uint64_t id = m->op_id;
	const char *name = m->start.method;

	// The checks of docs/protocol.md § 5.2, in its order.
	aai_mtx_lock(&ss->mtx);
	bool dup = id <= ss->base || entry_find(ss, id) != NULL;
	aai_mtx_unlock(&ss->mtx);
	if (dup) {
		reject(ss, id, name, AA_EEXIST, "duplicate op id");
		return;
	}
	const method *mt = aai_srv_method_find(s, name);
	if (mt == NULL) {
		reject(ss, id, name, AA_ENOENT, "no such method");
		return;
	}
	if (!types_ok(mt->def.cancel_types, m->start.cancel_types)) {
		reject(ss, id, mt->name, AA_ENOTSUP,
		       "method does not honour the cancellation types");
		return;
	}
	const aa_allocator *pa = aai_pool_allocator(s->pool);
	size_t esize = aai_entry_size(m->start.deadline_ms);
	entry *e = pa->alloc(pa->ctx, esize);
	if (e == NULL) {
		reject(ss, id, mt->name, AA_ENOMEM, "out of memory");
		return;
	}
	memset(e, 0, esize);
	e->ss = ss;
	e->m = mt;
	e->refs = 1;
	e->call = (aa_call_info){
	    .op_id = id,
	    .conn_id = ss->conn_id,
	    .method = mt->name,
	    .deadline_ms = m->start.deadline_ms,
	    .cancel_types = mt->def.cancel_types,
	};
	int err = 0;
	aai_mtx_lock(&ss->mtx);
	if (atomic_fetch_add(&ss->inst->pending, 1) >= s->max_pending) {
		// The limit is per client instance, over all its connections
		// (their receive threads race here: the add decides).
		atomic_fetch_sub(&ss->inst->pending, 1);
		err = AA_ELIMIT;
	} else if (atomic_load(&s->closed_flag) || ss->state != SS_READY) {
		atomic_fetch_sub(&ss->inst->pending, 1);
		err = AA_EUNAVAIL;
	} else {
		entry_table(ss, e);
		ss->refs++; // the entry's
	}
	aai_mtx_unlock(&ss->mtx);
	if (err != 0) {
		pa->free(pa->ctx, e, esize);
		reject(ss, id, mt->name, err,
		       err == AA_ELIMIT ? "too many pending ops"
		                        : "server shutting down");
		return;
	}
	// Accepted: the id now counts for the instance's later connections.
	uint64_t high = atomic_load(&ss->inst->high);
	while (high < id &&
	       !atomic_compare_exchange_weak(&ss->inst->high, &high, id)) {
	}

	AAI_CHECKPOINT("server.before_start", &e->call);
	aa_op *op = NULL;
	in_method = true;
	reject_text_set = false;
	int rv = mt->def.start(&op, mt->def.arg, &e->call, m->start.payload,
	                       m->start.payload_len, &s->assoc);
	in_method = false;
	if (rv != 0 || op == NULL) {
		if (rv <= 0 || rv > AAI_WIRE_ERROR_MAX) {
			rv = AA_EINTERNAL;
		}
		aai_mtx_lock(&ss->mtx);
		entry_untable(ss, e);
		e->phase = E_REFUSED;
		aai_mtx_unlock(&ss->mtx);
		atomic_fetch_sub(&ss->inst->pending, 1);
		reject(ss, id, mt->name, rv,
		       reject_text_set ? reject_text : aa_strerror(rv));
		entry_unref(e);
		return;
	}

	aai_mtx_lock(&ss->mtx);
	e->op = op;
	e->phase = E_RUNNING;
	if (e->call.deadline_ms > 0) {
		uint64_t spent = (aa_clock_us() - t0_us) / 1000;
		uint64_t d = e->call.deadline_ms;
		aa_timer_init(&e->deadline, on_deadline, e);
		if (aa_timer_start(&e->deadline, s->tq,
		                   d > spent ? d - spent : 0) == 0) {
			e->dl = ED_ARMED;
		}
	}
	// Close (or the client leaving) while the method ran: cancel now.
	bool cancel_now =
	    atomic_load(&s->closed_flag) || ss->state != SS_READY;
	if (cancel_now) {
		e->srv_cancel = ES_CANCELLED;
		e->refs++;
	}
	aai_mtx_unlock(&ss->mtx);
	aai_count(&s->st.started);
	atomic_fetch_add(&s->st.pending, 1);
	// Progress the provider reports before this point has no handler to
	// go to and is lost: a method starts work, it does not report yet.
	(void)aa_op_set_progress_handler(op, on_progress, e);
	aai_srv_log(s, AA_SEV_START, ss->conn_id, e, 0, NULL);
	if (aa_op_set_handler(op, on_done, e) != 0) {
		// The method broke its contract by setting a handler: we
		// cannot see the end of this op. Answer now, then forget it.
		finish(e, AA_EINTERNAL, "method set the op's handler");
	}
	if (cancel_now) {
		aa_cancel_type t = aai_weakest(mt->def.cancel_types);
		if (t != AA_CANCEL_NONE) {
			(void)aa_op_cancel(op, t);
		}
		entry_unref(e);
	}
}

void
aai_call_cancel(session *ss, const aai_wire_msg *m)
{
	aa_server *s = ss->s;
	aai_mtx_lock(&ss->mtx);
	entry *e = entry_find(ss, m->op_id);
	if (e != NULL && e->phase == E_FINISHED) {
		// Its Complete is out or on its way, its outcome not logged
		// yet: finish logs this Cancel after it (step 2).
		bool late = e->cancel == EC_NONE;
		if (late) {
			e->cancel = EC_AFTER_FINISH;
		}
		aai_mtx_unlock(&ss->mtx);
		aai_count(&s->st.cancels_ignored);
		if (late) {
			aai_count(&s->st.cancels_late);
		}
		return;
	}
	if (e == NULL || e->phase != E_RUNNING || e->cancel != EC_NONE) {
		aai_mtx_unlock(&ss->mtx);
		aai_count(&s->st.cancels_ignored);
		if (e == NULL && m->op_id <= atomic_load(&ss->inst->high)) {
			// Accepted once, pending no more: the op finished and
			// its Complete is on its way (the already-complete
			// timeline). Nothing answers this Cancel.
			aai_count(&s->st.cancels_late);
			aai_srv_log_op(
			    s, AA_SEV_CANCEL_RECEIVED, ss->conn_id, m->op_id,
			    NULL, 0, 0,
			    "after completion: the op had finished");
		}
		return;
	}
	if (aa_op_status(e->op) != AA_STARTED) {
		// The op finished before this Cancel came, though its Complete
		// is not sent yet: the already-complete timeline. The client
		// drops the result (wasted), and the Complete says the Cancel
		// came after (cancel_received false). finish logs this Cancel
		// after the op's outcome.
		e->cancel = EC_AFTER_FINISH;
		aai_mtx_unlock(&ss->mtx);
		aai_count(&s->st.cancels_ignored);
		aai_count(&s->st.cancels_late);
		return;
	}
	// The client has cancelled: whatever happens, it drops the result.
	e->cancel = EC_WHILE_RUNNING;
	aa_cancel_type t = (aa_cancel_type)m->cancel.type;
	if (!aa_cancel_supports(e->m->def.cancel_types, t)) {
		aai_mtx_unlock(&ss->mtx);
		aai_count(&s->st.cancels_ignored);
		return;
	}
	e->refs++;
	aai_mtx_unlock(&ss->mtx);
	aai_count(&s->st.cancels_received);
	aai_srv_log(s, AA_SEV_CANCEL_RECEIVED, ss->conn_id, e, 0,
	            aa_cancel_type_name(t));
	(void)aa_op_cancel(e->op, t);
	entry_unref(e);
}
