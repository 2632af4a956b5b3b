// aa-test-labels: concurrent
// test_inproc.c: the in-process transport's own mechanisms
// (common/src/transport_inproc.c): the sleep/wake race of an idle end, the
// process-wide spinner limit, the hand-over of a batch to the peer end's
// thread, and what a callback run by that thread may do; the test hooks of
// inproc_hooks.h (hand-over off, a listener killed). Races are forced with
// the checkpoints inproc.spin and inproc.before_sleep; no sleeps.
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <aa/client.h>
#include <aa/server.h>

#include "../common/src/inproc_hooks.h"
#include "../common/src/transport.h"
#include "testutil.h"

// ---- a recording endpoint ----

typedef struct endpoint {
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	int frames;
	int downs;
	int err;
	pthread_t first_thread;  // the thread that ran the first frame
	bool echo;               // send every frame back
	gate *hold_first;        // the first frame callback waits for it
	gate *first_reached;     // ... after opening this one
	aai_conn *free_on_first; // freed from the first frame callback
	bool other_on_rx;        // ... this thread was in its receive path
} endpoint;

static void
ep_init(endpoint *e)
{
	memset(e, 0, sizeof(*e));
	pthread_mutex_init(&e->mtx, NULL);
	pthread_cond_init(&e->cv, NULL);
}

static void
ep_fini(endpoint *e)
{
	pthread_mutex_destroy(&e->mtx);
	pthread_cond_destroy(&e->cv);
}

static void
ep_frame(void *arg, aai_conn *c, const uint8_t *data, size_t len)
{
	endpoint *e = arg;
	pthread_mutex_lock(&e->mtx);
	bool first = e->frames++ == 0;
	if (first) {
		e->first_thread = pthread_self();
	}
	pthread_cond_broadcast(&e->cv);
	pthread_mutex_unlock(&e->mtx);
	if (e->echo) {
		(void)aai_conn_send(c, data, len);
	}
	if (first && e->free_on_first != NULL) {
		e->other_on_rx = aai_conn_on_rx_thread(e->free_on_first);
		cr_assert_eq(aai_conn_free(e->free_on_first), 0);
	}
	if (first && e->hold_first != NULL) {
		gate_open(e->first_reached);
		gate_wait(e->hold_first);
	}
}

static void
ep_down(void *arg, aai_conn *c, int err)
{
	endpoint *e = arg;
	pthread_mutex_lock(&e->mtx);
	e->downs++;
	e->err = err;
	pthread_cond_broadcast(&e->cv);
	pthread_mutex_unlock(&e->mtx);
}

static const aai_conn_cbs ep_cbs = {.frame = ep_frame, .down = ep_down};

static void
ep_wait_frames(endpoint *e, int n)
{
	pthread_mutex_lock(&e->mtx);
	while (e->frames < n) {
		pthread_cond_wait(&e->cv, &e->mtx);
	}
	pthread_mutex_unlock(&e->mtx);
}

static void
ep_wait_down(endpoint *e)
{
	pthread_mutex_lock(&e->mtx);
	while (e->downs == 0) {
		pthread_cond_wait(&e->cv, &e->mtx);
	}
	pthread_mutex_unlock(&e->mtx);
}

// ---- checkpoints ----

typedef struct cp_state {
	pthread_mutex_t mtx;
	void *hold_subject;   // before_sleep: hold this conn's thread once
	bool held;            // ... it was held
	bool hold_server;     // fx_accept sets hold_subject
	gate sleep_reached;   // the held thread is there
	gate sleep_release;   // let it go
	bool hold_first_spin; // inproc.spin: hold the first spinner
	int spins;            // inproc.spin reached
	int max_spinners;     // the most spinners seen at inproc.spin
	void *idle[8];        // distinct conns that reached before_sleep
	int nidle;
	int idle_want; // open idle_reached at this many
	gate idle_reached;
	gate spin_reached;
	gate spin_release;
} cp_state;

static cp_state cp;

static void
cp_init(void)
{
	memset(&cp, 0, sizeof(cp));
	pthread_mutex_init(&cp.mtx, NULL);
	gate_init(&cp.sleep_reached);
	gate_init(&cp.sleep_release);
	gate_init(&cp.idle_reached);
	gate_init(&cp.spin_reached);
	gate_init(&cp.spin_release);
}

static void
cp_fn(void *arg, const char *name, void *subject)
{
	(void)arg;
	if (strcmp(name, "inproc.spin") == 0) {
		aai_inproc_stat st;
		aai_inproc_stats(&st);
		pthread_mutex_lock(&cp.mtx);
		bool hold = cp.hold_first_spin && cp.spins == 0;
		cp.spins++;
		if (st.spinners > cp.max_spinners) {
			cp.max_spinners = st.spinners;
		}
		pthread_mutex_unlock(&cp.mtx);
		if (hold) {
			gate_open(&cp.spin_reached);
			gate_wait(&cp.spin_release);
		}
		return;
	}
	if (strcmp(name, "inproc.before_sleep") != 0) {
		return;
	}
	pthread_mutex_lock(&cp.mtx);
	bool known = false;
	for (int i = 0; i < cp.nidle; i++) {
		known = known || cp.idle[i] == subject;
	}
	if (!known && cp.nidle < 8) {
		cp.idle[cp.nidle++] = subject;
		if (cp.nidle == cp.idle_want) {
			gate_open(&cp.idle_reached);
		}
	}
	bool hold = !cp.held && cp.hold_subject == subject;
	cp.held = cp.held || hold;
	pthread_mutex_unlock(&cp.mtx);
	if (hold) {
		gate_open(&cp.sleep_reached);
		gate_wait(&cp.sleep_release);
	}
}

// ---- a pipe: one listener, one dialled connection, both started ----

typedef struct pipe_fx {
	aai_listener *l;
	aai_conn *cli;
	aai_conn *srv;
	endpoint cli_ep;
	endpoint srv_ep;
} pipe_fx;

static void
fx_accept(void *arg, aai_conn *c)
{
	pipe_fx *f = arg;
	f->srv = c;
	pthread_mutex_lock(&cp.mtx);
	if (cp.hold_server) {
		cp.hold_subject = c; // before it starts and reaches the point
	}
	pthread_mutex_unlock(&cp.mtx);
	aai_conn_start(c, &ep_cbs, &f->srv_ep);
}

static void
fx_open(pipe_fx *f, const char *name)
{
	char url[64];
	ep_init(&f->cli_ep);
	ep_init(&f->srv_ep);
	snprintf(url, sizeof(url), "inproc://%s", name);
	cr_assert_eq(aai_listen(&f->l, url, NULL, fx_accept, f), 0);
	cr_assert_eq(aai_dial(&f->cli, url, NULL), 0);
	aai_conn_start(f->cli, &ep_cbs, &f->cli_ep);
}

static void
fx_close(pipe_fx *f)
{
	aai_conn_free(f->cli);
	aai_conn_free(f->srv);
	aai_listener_free(f->l);
	ep_fini(&f->cli_ep);
	ep_fini(&f->srv_ep);
}

static void
send_byte(aai_conn *c, uint8_t b)
{
	cr_assert_eq(aai_conn_send(c, &b, 1), 0);
}

// wait_sleepers waits until n more waits on a condition variable began
// than before (the owner threads went to sleep: a hand-over may follow).
static void
wait_sleepers(uint64_t before, uint64_t n)
{
	aai_inproc_stat st;
	for (;;) {
		aai_inproc_stats(&st);
		if (st.sleeps >= before + n) {
			return;
		}
		sched_yield();
	}
}

static void
suite_fini(void)
{
	aa_checkpoint_set(NULL, NULL);
	aai_inproc_spin_config(-1, -1);
	aai_inproc_set_handover(true);
	aa_test_check_live();
}

TestSuite(inproc, .timeout = 60, .fini = suite_fini);

// ---- the sleep/wake race ----

// sleep_race: the server end's thread has found nothing to take and is
// about to sleep (held at inproc.before_sleep, no lock held) when a frame
// arrives: the sender sees no sleeper to wake, so the thread must find the
// frame when it re-checks under the lock instead of sleeping past it.
static void
sleep_race(const char *name)
{
	pipe_fx f;
	cp_init();
	cp.hold_server = true;
	aa_checkpoint_set(cp_fn, NULL);
	fx_open(&f, name);
	gate_wait(&cp.sleep_reached); // the server end is about to sleep

	send_byte(f.cli, 7);
	gate_open(&cp.sleep_release);
	ep_wait_frames(&f.srv_ep, 1); // never lost: it is delivered
	aa_checkpoint_set(NULL, NULL);
	fx_close(&f);
}

Test(inproc, frame_sent_as_receiver_decides_to_sleep)
{
	aai_inproc_spin_config(1, 0); // never spin: straight to sleep
	sleep_race("sleep-race");
}

// The same race after a spin that ended without a frame (spins of 1 ns).
Test(inproc, frame_sent_after_a_spin_timed_out)
{
	aai_inproc_spin_config(1, 1);
	sleep_race("spin-race");
}

// ---- the spinner limit ----

// With a limit of one spinner, the first idle end that spins holds the
// only slot (held at inproc.spin); the three other idle ends find no slot
// and go to sleep without spinning. Then everything still works.
Test(inproc, no_more_spinners_than_the_limit)
{
	pipe_fx a, b;
	aai_inproc_stat st0, st;
	cp_init();
	cp.hold_first_spin = true;
	cp.idle_want = 3;
	aai_inproc_stats(&st0);
	aai_inproc_spin_config(1, 1000000000); // a spin would last 1 s
	aa_checkpoint_set(cp_fn, NULL);
	fx_open(&a, "limit-a");
	fx_open(&b, "limit-b");
	gate_wait(&cp.spin_reached); // one end holds the slot
	gate_wait(&cp.idle_reached); // three ends went idle meanwhile
	aai_inproc_stats(&st);
	cr_assert_eq(st.spinners, 1);
	cr_assert_geq(st.spin_refused - st0.spin_refused, 3);
	pthread_mutex_lock(&cp.mtx);
	cr_assert_eq(cp.spins, 1, "only one end spins");
	pthread_mutex_unlock(&cp.mtx);

	gate_open(&cp.spin_release);
	a.srv_ep.echo = b.srv_ep.echo = true; // before any frame is sent
	send_byte(a.cli, 1);
	send_byte(b.cli, 2);
	ep_wait_frames(&a.cli_ep, 1);
	ep_wait_frames(&b.cli_ep, 1);
	aa_checkpoint_set(NULL, NULL);
	pthread_mutex_lock(&cp.mtx);
	cr_assert_leq(cp.max_spinners, 1);
	pthread_mutex_unlock(&cp.mtx);
	fx_close(&a);
	fx_close(&b);
	aai_inproc_stats(&st);
	cr_assert_eq(st.spinners, 0);
}

// A limit of 0 (one CPU): no end ever spins, frames still flow.
Test(inproc, one_cpu_never_spins)
{
	pipe_fx a;
	aai_inproc_stat st0, st;
	cp_init();
	cp.idle_want = 2;
	aai_inproc_stats(&st0);
	aai_inproc_spin_config(0, 1000000000);
	aa_checkpoint_set(cp_fn, NULL);
	fx_open(&a, "one-cpu");
	gate_wait(&cp.idle_reached);
	a.srv_ep.echo = true;
	for (int i = 0; i < 100; i++) {
		send_byte(a.cli, (uint8_t)i);
		ep_wait_frames(&a.cli_ep, i + 1);
	}
	aa_checkpoint_set(NULL, NULL);
	aai_inproc_stats(&st);
	pthread_mutex_lock(&cp.mtx);
	cr_assert_eq(cp.spins, 0);
	pthread_mutex_unlock(&cp.mtx);
	cr_assert_eq(st.spins, st0.spins);
	fx_close(&a);
}

// ---- the hand-over ----

// Both ends sleep; a frame sent by a user thread wakes the server end,
// whose echo (sent by its batch) is then delivered by the same thread to
// the client end, which sleeps: one thread, no wake-up.
Test(inproc, echo_is_handed_over_to_the_sleeping_end)
{
	pipe_fx f;
	aai_inproc_stat st0, st;
	cp_init();
	aai_inproc_spin_config(1, 0);
	aai_inproc_stats(&st0);
	fx_open(&f, "handover");
	f.srv_ep.echo = true;
	wait_sleepers(st0.sleeps, 2);
	send_byte(f.cli, 1);
	ep_wait_frames(&f.cli_ep, 1);
	aai_inproc_stats(&st);
	cr_assert_geq(st.handovers - st0.handovers, 1);
	cr_assert(pthread_equal(f.cli_ep.first_thread, f.srv_ep.first_thread),
	          "the server end's thread ran the client's callback");
	fx_close(&f);
}

// While the server end's thread runs a client callback (handed over, and
// held there), a frame sent to the server end by a user thread is taken
// by the client end's thread: neither end waits for a callback of the
// other to return.
Test(inproc, frame_to_an_end_whose_thread_is_away_is_delivered)
{
	pipe_fx f;
	aai_inproc_stat st0;
	gate hold, reached;
	gate_init(&hold);
	gate_init(&reached);
	cp_init();
	aai_inproc_spin_config(1, 0);
	aai_inproc_stats(&st0);
	fx_open(&f, "away");
	f.srv_ep.echo = true;
	f.cli_ep.hold_first = &hold;
	f.cli_ep.first_reached = &reached;
	wait_sleepers(st0.sleeps, 2);
	send_byte(f.cli, 1);
	gate_wait(&reached); // a client callback runs, held
	cr_assert(pthread_equal(f.cli_ep.first_thread, f.srv_ep.first_thread),
	          "handed over to the server end's thread");

	send_byte(f.cli, 2); // the server end's thread is away
	ep_wait_frames(&f.srv_ep, 2);
	gate_open(&hold);
	ep_wait_frames(&f.cli_ep, 2);
	fx_close(&f);
	gate_fini(&hold);
	gate_fini(&reached);
}

// A callback of the server end, run by the client end's thread (handed
// over), frees the client end: the free is deferred as from the client's
// own callback, the client end goes down, and nothing deadlocks. The
// thread counts as in the client end's receive path there
// (aai_conn_on_rx_thread), which is how the layers' stop says AA_EDEADLK.
Test(inproc, free_of_own_end_from_a_handed_over_callback)
{
	pipe_fx f;
	aai_inproc_stat st0;
	cp_init();
	aai_inproc_spin_config(1, 0);
	aai_inproc_stats(&st0);
	fx_open(&f, "free-away");
	f.cli_ep.echo = true;
	f.srv_ep.free_on_first = f.cli;
	wait_sleepers(st0.sleeps, 2);
	send_byte(f.srv, 1); // the client echoes; its thread delivers it
	ep_wait_down(&f.cli_ep);
	ep_wait_down(&f.srv_ep);
	cr_assert(pthread_equal(f.cli_ep.first_thread, f.srv_ep.first_thread),
	          "handed over to the client end's thread");
	cr_assert(f.srv_ep.other_on_rx, "a layer's stop would say EDEADLK");
	f.cli = NULL; // freed by its own thread
	fx_close(&f);
	// That thread frees the client end after its down callback returned,
	// so the wait above can end first: wait for the free itself before
	// the suite's live-object check.
	while (aa_live(AA_LIVE_OTHER) != 0) {
		sched_yield();
	}
}

// ---- the layers' stop from a handed-over callback ----

typedef struct stop_try {
	aa_server *srv;
	pthread_t method_thread;
	bool same_thread; // the handler ran on the method's thread
	int stop_rv;
	gate done;
} stop_try;

static int
m_where(aa_op **opp, void *arg, const aa_call_info *call, const void *data,
        size_t len, const aa_assoc *assoc)
{
	stop_try *t = arg;
	(void)call;
	(void)data;
	(void)len;
	t->method_thread = pthread_self();
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL};
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv == 0) {
		aa_op_complete(*opp, NULL, 0, NULL);
	}
	return rv;
}

static void
where_done(aa_op *op, void *arg)
{
	stop_try *t = arg;
	(void)op;
	t->same_thread = pthread_equal(t->method_thread, pthread_self());
	if (t->same_thread) {
		t->stop_rv = aa_server_stop(t->srv);
	}
	gate_open(&t->done);
}

// A call whose method and handler run on one thread: either the server
// end's thread (it delivered the Start, then the Complete to the client
// end, which slept: a hand-over) or the client end's (it took the Start
// from the sleeping server end, then its own Complete). The handler stops
// the server. In the first case the server's connection needs this very
// thread to go down: stop must say AA_EDEADLK, not wait forever; in the
// second it stops the server (0). Which case a call gets depends on which
// end is asleep when, so calls are repeated (a new server and client each
// time) until the first case has been seen.
Test(inproc, server_stop_from_a_handed_over_client_handler)
{
	aai_inproc_spin_config(1, 0);
	bool deadlk_seen = false;
	for (int i = 0; i < 100 && !deadlk_seen; i++) {
		stop_try t = {.stop_rv = -1};
		char url[64];
		aa_client *cli;
		aa_op *op;
		gate_init(&t.done);
		snprintf(url, sizeof(url), "inproc://stop-try-%d", i);
		cr_assert_eq(aa_server_alloc(&t.srv, NULL), 0);
		aa_method_def d = {.name = "where",
		                   .start = m_where,
		                   .arg = &t,
		                   .cancel_types = AA_CANCEL_ALL};
		cr_assert_eq(aa_server_register(t.srv, &d), 0);
		cr_assert_eq(aa_server_listen(t.srv, url), 0);
		aa_client_opts co = {.url = url};
		cr_assert_eq(aa_client_open(&cli, &co), 0);
		cr_assert_eq(
		    aa_client_call(&op, cli, "where", NULL, 0, NULL, NULL), 0);
		cr_assert_eq(aa_op_set_handler(op, where_done, &t), 0);
		gate_wait(&t.done);
		if (t.same_thread) {
			cr_assert(t.stop_rv == AA_EDEADLK || t.stop_rv == 0,
			          "stop: %s", aa_strerror(t.stop_rv));
			deadlk_seen = t.stop_rv == AA_EDEADLK;
		}
		aa_op_unref(op);
		aa_client_free(cli);
		aa_server_free(t.srv);
		gate_fini(&t.done);
	}
	cr_assert(deadlk_seen, "no handler ran on the server end's thread");
}

// ---- the test hooks ----

// With the hand-over off, the echo of the test above is delivered by the
// client end's own thread: no batch changes threads.
Test(inproc, hand_over_off_keeps_each_end_on_its_own_thread)
{
	pipe_fx f;
	aai_inproc_stat st0, st;
	cp_init();
	aai_inproc_spin_config(1, 0);
	aai_inproc_set_handover(false);
	aai_inproc_stats(&st0);
	fx_open(&f, "no-handover");
	f.srv_ep.echo = true;
	wait_sleepers(st0.sleeps, 2);
	for (int i = 0; i < 20; i++) {
		send_byte(f.cli, (uint8_t)i);
		ep_wait_frames(&f.cli_ep, i + 1);
	}
	aai_inproc_stats(&st);
	cr_assert_eq(st.handovers, st0.handovers);
	cr_assert(!pthread_equal(f.cli_ep.first_thread, f.srv_ep.first_thread),
	          "each end ran its own callbacks");
	fx_close(&f);
}

// A killed listener cuts its connection at once, with no reason: both
// ends go down with AA_ECONNLOST, a dial to its name is refused, and the
// owner still closes and frees it. An unknown name is AA_ENOENT.
Test(inproc, kill_cuts_the_connections_and_refuses_dials)
{
	pipe_fx f;
	aai_conn *late;
	cp_init();
	fx_open(&f, "kill");
	send_byte(f.cli, 1);
	ep_wait_frames(&f.srv_ep, 1);
	cr_assert_eq(aai_inproc_kill("kill"), 0);
	ep_wait_down(&f.cli_ep);
	ep_wait_down(&f.srv_ep);
	cr_assert_eq(f.cli_ep.err, AA_ECONNLOST, "%s",
	             aa_strerror(f.cli_ep.err));
	cr_assert_eq(f.srv_ep.err, AA_ECONNLOST, "%s",
	             aa_strerror(f.srv_ep.err));
	cr_assert_eq(aai_dial(&late, "inproc://kill", NULL), AA_ECONNREF);
	cr_assert_eq(aai_inproc_kill("kill"), AA_ENOENT);
	cr_assert_eq(aai_inproc_kill("no-such-listener"), AA_ENOENT);
	fx_close(&f);
}

// A listener freed before the connections made through it: they go on
// (they no longer belong to it), and a kill of its name finds nothing.
Test(inproc, connections_outlive_their_listener)
{
	pipe_fx f;
	cp_init();
	fx_open(&f, "outlive");
	f.srv_ep.echo = true;
	aai_listener_free(f.l);
	cr_assert_eq(aai_inproc_kill("outlive"), AA_ENOENT);
	send_byte(f.cli, 1);
	ep_wait_frames(&f.cli_ep, 1);
	aai_conn_free(f.cli);
	aai_conn_free(f.srv);
	ep_fini(&f.cli_ep);
	ep_fini(&f.srv_ep);
}
