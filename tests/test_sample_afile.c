// aa-test-labels: concurrent
//
// test_sample_afile.c: the async file handle sample
// (demos/samples/afile.c): open, write, read and close chained from each
// other's handlers on the same thread; actions of one file one at a time
// and in order under concurrent enqueues; the three abort cases, each
// forced with a gate (a queued action dropped, a running action finished
// without its result and a cancelled open closing its file, a handler in
// progress waited for), and case 2 for a running write, read and close;
// cancel after completion; 10,000 cancel-vs-completion races; destroy
// with actions pending (no callback after it, no descriptor left).
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "afile.h"
#include "sample_util.h"

TestSuite(sample_afile, .timeout = 120, .fini = aa_test_check_live);

typedef struct fixture {
	char dir[64];
	char path[96];
	aa_executor *pool;
	afile_mgr *m;
	// The hook: held at gates when hold is set; lined up on a barrier
	// when race is set; checks that actions never overlap.
	atomic_bool hold;
	gate held;
	gate release;
	pthread_barrier_t *race;
	atomic_int running;
	atomic_int overlaps;
	pthread_mutex_t log_mtx;
	uint64_t log[256];
	int nlog;
} fixture;

static void
hook(void *ctx, const char *action, uint64_t off)
{
	fixture *f = ctx;
	(void)action;
	if (atomic_fetch_add(&f->running, 1) != 0) {
		atomic_fetch_add(&f->overlaps, 1);
	}
	pthread_mutex_lock(&f->log_mtx);
	if (f->nlog < 256) {
		f->log[f->nlog++] = off;
	}
	pthread_mutex_unlock(&f->log_mtx);
	if (atomic_load(&f->hold)) {
		gate_open(&f->held);
		gate_wait(&f->release);
	}
	if (f->race != NULL) {
		pthread_barrier_wait(f->race);
	}
	atomic_fetch_sub(&f->running, 1);
}

static void
fx_init(fixture *f, int threads)
{
	memset(f, 0, sizeof(*f));
	snprintf(f->dir, sizeof(f->dir), "/tmp/aa-afile-XXXXXX");
	cr_assert_not_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/f", f->dir);
	gate_init(&f->held);
	gate_init(&f->release);
	pthread_mutex_init(&f->log_mtx, NULL);
	cr_assert_eq(aa_pool_alloc(&f->pool, threads), 0);
	cr_assert_eq(afile_mgr_alloc(&f->m, f->pool), 0);
	afile_mgr_set_hook(f->m, hook, f);
}

static void
fx_fini(fixture *f)
{
	afile_mgr_free(f->m);
	aa_executor_free(f->pool);
	unlink(f->path);
	rmdir(f->dir);
	gate_fini(&f->held);
	gate_fini(&f->release);
	pthread_mutex_destroy(&f->log_mtx);
}

static int
count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = 0;
	cr_assert_not_null(d);
	while (readdir(d) != NULL) {
		n++;
	}
	closedir(d);
	return n;
}

// open_now opens the fixture's file and waits for it.
static afile *
open_now(fixture *f)
{
	tally done;
	seen s;
	aa_op *op;
	const void *data;
	size_t len;
	afile *file;
	tally_init(&done);
	seen_init(&s, &done);
	s.keep = true;
	cr_assert_eq(afile_open(f->m, f->path, O_RDWR | O_CREAT, NULL, seen_cb,
	                        &s, &op),
	             0);
	tally_wait(&done, 1);
	cr_assert_eq(aa_op_result(op, &data, &len), 0);
	file = *(afile *const *)data;
	aa_op_unref(op);
	tally_fini(&done);
	return file;
}

// close_now closes file and waits for it.
static void
close_now(afile *file)
{
	tally done;
	seen s;
	aa_op *op;
	tally_init(&done);
	seen_init(&s, &done);
	cr_assert_eq(afile_close(file, NULL, seen_cb, &s, &op), 0);
	tally_wait(&done, 1);
	cr_assert_eq(atomic_load(&s.state), AA_COMPLETED);
	tally_fini(&done);
}

Test(sample_afile, a_refused_action_never_runs_its_callback)
{
	fixture f;
	seen s;
	aa_op *op = NULL;
	afile *file;
	fx_init(&f, 1);
	seen_init(&s, NULL);
	cr_assert_eq(
	    afile_open(NULL, f.path, O_RDWR | O_CREAT, NULL, seen_cb, &s, &op),
	    AA_EINVAL);
	cr_assert_eq(
	    afile_open(f.m, NULL, O_RDWR | O_CREAT, NULL, seen_cb, &s, &op),
	    AA_EINVAL);
	cr_assert_eq(
	    afile_open(f.m, f.path, O_RDWR | O_CREAT, NULL, NULL, &s, &op),
	    AA_EINVAL);
	file = open_now(&f);
	cr_assert_eq(afile_write(file, NULL, 3, 0, NULL, seen_cb, &s, &op),
	             AA_EINVAL);
	cr_assert_eq(afile_write(file, "x", 1, 0, NULL, seen_cb, &s, NULL),
	             AA_EINVAL);
	cr_assert_eq(afile_read(NULL, 1, 0, NULL, seen_cb, &s, &op),
	             AA_EINVAL);
	cr_assert_eq(afile_close(file, NULL, NULL, &s, &op), AA_EINVAL);
	cr_assert_null(op);
	close_now(file);
	fx_fini(&f);
	cr_assert_eq(atomic_load(&s.runs), 0, "no callback ran");
}

// ---- Chained: each step started from the previous one's handler ----

typedef struct story {
	fixture *f;
	afile *file;
	int step;
	pthread_t threads[4];
	char read[16];
	tally done;
} story;

static void story_next(aa_op *op, void *arg);

static void
story_next(aa_op *op, void *arg)
{
	story *st = arg;
	const void *data;
	size_t len;
	aa_op *next;
	st->threads[st->step] = pthread_self();
	cr_assert_eq(aa_op_status(op), AA_COMPLETED, "step %d", st->step);
	cr_assert_eq(aa_op_result(op, &data, &len), 0);
	switch (st->step++) {
	case 0:
		st->file = *(afile *const *)data;
		cr_assert_eq(afile_write(st->file, "hello", 5, 0, NULL,
		                         story_next, st, &next),
		             0);
		break;
	case 1:
		cr_assert_eq(*(const size_t *)data, 5);
		cr_assert_eq(
		    afile_read(st->file, 16, 0, NULL, story_next, st, &next),
		    0);
		break;
	case 2:
		memcpy(st->read, data, len);
		cr_assert_eq(
		    afile_close(st->file, NULL, story_next, st, &next), 0);
		break;
	default:
		tally_add(&st->done);
		break;
	}
	aa_op_unref(op);
}

Test(sample_afile, open_write_read_close_chained_on_one_thread)
{
	fixture f;
	story st = {.f = &f};
	aa_op *op;
	fx_init(&f, 2);
	tally_init(&st.done);
	// Held until the call returned: every handler runs on the strand.
	atomic_store(&f.hold, true);
	cr_assert_eq(afile_open(f.m, f.path, O_RDWR | O_CREAT, NULL,
	                        story_next, &st, &op),
	             0);
	gate_open(&f.release);
	tally_wait(&st.done, 1);
	cr_assert_str_eq(st.read, "hello");
	for (int i = 1; i < 4; i++) {
		cr_assert(pthread_equal(st.threads[i], st.threads[0]),
		          "chained actions run next on the same thread");
	}
	fx_fini(&f);
	tally_fini(&st.done);
}

// ---- Order under concurrent enqueues ----

typedef struct writer {
	afile *file;
	int id;
	tally *done;
	seen s[50];
} writer;

static void *
write_many(void *arg)
{
	writer *w = arg;
	for (int i = 0; i < 50; i++) {
		aa_op *op;
		seen_init(&w->s[i], w->done);
		cr_assert_eq(afile_write(w->file, "x", 1,
		                         (uint64_t)(w->id * 1000 + i), NULL,
		                         seen_cb, &w->s[i], &op),
		             0);
	}
	return NULL;
}

Test(sample_afile, one_at_a_time_in_order_under_concurrent_enqueues)
{
	fixture f;
	tally done;
	writer w[4];
	thr t[4];
	afile *file;
	int last[4] = {-1, -1, -1, -1};
	fx_init(&f, 4);
	file = open_now(&f);
	f.nlog = 0;
	tally_init(&done);
	for (int k = 0; k < 4; k++) {
		w[k] = (writer){.file = file, .id = k, .done = &done};
		thr_start(&t[k], write_many, &w[k]);
	}
	for (int k = 0; k < 4; k++) {
		thr_join(&t[k]);
	}
	tally_wait(&done, 200);
	cr_assert_eq(atomic_load(&f.overlaps), 0, "one at a time");
	cr_assert_eq(f.nlog, 200);
	for (int i = 0; i < 200; i++) {
		int k = (int)(f.log[i] / 1000);
		int n = (int)(f.log[i] % 1000);
		cr_assert_eq(n, last[k] + 1, "each thread's writes in order");
		last[k] = n;
	}
	close_now(file);
	fx_fini(&f);
	tally_fini(&done);
}

// ---- Abort, case 1: a queued action is dropped ----

static void
block_pool(void *arg)
{
	gate_wait(arg);
}

Test(sample_afile, abort_drops_a_queued_action)
{
	fixture f;
	gate busy;
	seen s;
	aa_op *op;
	fx_init(&f, 1);
	gate_init(&busy);
	cr_assert_eq(aa_executor_post(f.pool, block_pool, &busy), 0);
	seen_init(&s, NULL);
	cr_assert_eq(
	    afile_open(f.m, f.path, O_RDWR | O_CREAT, NULL, seen_cb, &s, &op),
	    0);
	aa_op_ref(op);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(atomic_load(&s.runs), 1, "at once");
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED);
	cr_assert_eq(aa_op_cancel_detail(op), 1);
	gate_open(&busy);
	afile_mgr_free(f.m); // waits for the dropped action to leave
	f.m = NULL;
	cr_assert_eq(access(f.path, F_OK), -1, "the open never ran");
	aa_op_unref(op);
	fx_fini(&f);
	gate_fini(&busy);
}

// ---- Abort, case 2: a running open finishes, is undone, no result ----

Test(sample_afile, abort_of_a_running_open_closes_the_file_it_opened)
{
	fixture f;
	tally done;
	seen s;
	aa_op *op;
	int fds;
	fx_init(&f, 1);
	tally_init(&done);
	seen_init(&s, &done);
	fds = count_fds();
	atomic_store(&f.hold, true);
	cr_assert_eq(
	    afile_open(f.m, f.path, O_RDWR | O_CREAT, NULL, seen_cb, &s, &op),
	    0);
	aa_op_ref(op);
	gate_wait(&f.held); // right before open(2)
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(aa_op_cancel_detail(op), 2);
	cr_assert_eq(aa_op_status(op), AA_STARTED, "it finishes first");
	gate_open(&f.release);
	tally_wait(&done, 1);
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED, "no result");
	cr_assert_eq(access(f.path, F_OK), 0, "the open did run");
	afile_mgr_free(f.m);
	f.m = NULL;
	cr_assert_eq(count_fds(), fds, "and its file was closed");
	aa_op_unref(op);
	fx_fini(&f);
	tally_fini(&done);
}

// ---- Abort, case 2 for the other actions: write, read, close ----

// cancel_running holds the file's next action (kind k) right before its
// system call, cancels it, releases it and checks case 2: the call ran,
// its result was not delivered, the op ended CANCELED.
enum { RUN_WRITE, RUN_READ, RUN_CLOSE };

static void
cancel_running(int k)
{
	fixture f;
	tally done;
	seen s;
	aa_op *op;
	afile *file;
	int fds;
	char buf[8] = {0};
	int fd;
	fx_init(&f, 1);
	tally_init(&done);
	seen_init(&s, &done);
	fds = count_fds();
	file = open_now(&f);
	if (k == RUN_READ) {
		tally w;
		seen ws;
		tally_init(&w);
		seen_init(&ws, &w);
		cr_assert_eq(
		    afile_write(file, "old", 3, 0, NULL, seen_cb, &ws, &op),
		    0);
		tally_wait(&w, 1);
		tally_fini(&w);
	}
	atomic_store(&f.hold, true);
	if (k == RUN_WRITE) {
		cr_assert_eq(
		    afile_write(file, "new", 3, 0, NULL, seen_cb, &s, &op), 0);
	} else if (k == RUN_READ) {
		cr_assert_eq(afile_read(file, 3, 0, NULL, seen_cb, &s, &op),
		             0);
	} else {
		cr_assert_eq(afile_close(file, NULL, seen_cb, &s, &op), 0);
	}
	aa_op_ref(op);
	gate_wait(&f.held); // right before its system call
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), 0);
	cr_assert_eq(aa_op_cancel_detail(op), 2);
	cr_assert_eq(aa_op_status(op), AA_STARTED, "it finishes first");
	cr_assert_eq(atomic_load(&s.runs), 0);
	atomic_store(&f.hold, false);
	gate_open(&f.release);
	tally_wait(&done, 1);
	cr_assert_eq(atomic_load(&s.runs), 1);
	cr_assert_eq(atomic_load(&s.state), AA_CANCELED, "no result");
	cr_assert_eq(s.result[0], '\0', "nothing delivered");
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_EALREADY);
	aa_op_unref(op);
	if (k != RUN_CLOSE) {
		close_now(file);
	}
	afile_mgr_free(f.m);
	f.m = NULL;
	cr_assert_eq(count_fds(), fds, "the file is closed");
	if (k == RUN_WRITE) {
		// The write did happen: case 2 drops the result, not the
		// side effect.
		fd = open(f.path, O_RDONLY);
		cr_assert_geq(fd, 0);
		cr_assert_eq(read(fd, buf, sizeof(buf)), 3);
		cr_assert_str_eq(buf, "new");
		close(fd);
	}
	fx_fini(&f);
	tally_fini(&done);
}

Test(sample_afile, abort_of_a_running_write_drops_its_result)
{
	cancel_running(RUN_WRITE);
}

Test(sample_afile, abort_of_a_running_read_drops_its_bytes)
{
	cancel_running(RUN_READ);
}

Test(sample_afile, abort_of_a_running_close_still_closes_the_file)
{
	cancel_running(RUN_CLOSE);
}

// ---- Cancel after completion ----

Test(sample_afile, cancel_after_completion_does_nothing)
{
	fixture f;
	tally done;
	seen s;
	aa_op *op;
	afile *file;
	fx_init(&f, 1);
	tally_init(&done);
	seen_init(&s, &done);
	s.keep = true;
	file = open_now(&f);
	cr_assert_eq(afile_write(file, "done", 4, 0, NULL, seen_cb, &s, &op),
	             0);
	tally_wait(&done, 1);
	cr_assert_eq(aa_op_cancel(op, AA_CANCEL_TERMINAL), AA_EALREADY);
	cr_assert_eq(aa_op_status(op), AA_COMPLETED);
	cr_assert_eq(atomic_load(&s.runs), 1);
	aa_op_unref(op);
	close_now(file);
	fx_fini(&f);
	tally_fini(&done);
}

// ---- Abort, case 3: a handler in progress is waited for ----

typedef struct in_progress {
	gate reached;
	gate release;
	gate cancel_waits;
	atomic_bool handler_returned;
	aa_op *op;
	atomic_int cancel_rv;
	atomic_bool cancel_saw_return;
} in_progress;

static in_progress *the_ip;

static void
slow_handler(aa_op *op, void *arg)
{
	in_progress *ip = arg;
	(void)op;
	gate_open(&ip->reached);
	gate_wait(&ip->release);
	atomic_store(&ip->handler_returned, true);
}

static void
at_cancel_wait(void *arg, const char *name, void *subject)
{
	(void)arg;
	(void)subject;
	if (strcmp(name, "op.cancel_wait") == 0) {
		gate_open(&the_ip->cancel_waits); // a gate only
	}
}

static void *
cancel_it(void *arg)
{
	in_progress *ip = arg;
	atomic_store(&ip->cancel_rv, aa_op_cancel(ip->op, AA_CANCEL_TERMINAL));
	atomic_store(&ip->cancel_saw_return,
	             atomic_load(&ip->handler_returned));
	return NULL;
}

Test(sample_afile, abort_waits_for_a_handler_in_progress)
{
	fixture f;
	in_progress ip = {0};
	afile *file;
	thr t;
	fx_init(&f, 1);
	file = open_now(&f);
	gate_init(&ip.reached);
	gate_init(&ip.release);
	gate_init(&ip.cancel_waits);
	the_ip = &ip;
	// Held until the call returned, so that the handler runs on the
	// pool, not inside the call.
	atomic_store(&f.hold, true);
	cr_assert_eq(
	    afile_write(file, "w", 1, 0, NULL, slow_handler, &ip, &ip.op), 0);
	gate_open(&f.release);
	gate_wait(&ip.reached); // the handler runs on the pool
	aa_checkpoint_set(at_cancel_wait, NULL);
	thr_start(&t, cancel_it, &ip);
	gate_wait(&ip.cancel_waits); // the cancel waits for the handler
	gate_open(&ip.release);
	thr_join(&t);
	aa_checkpoint_set(NULL, NULL);
	cr_assert_eq(atomic_load(&ip.cancel_rv), AA_EALREADY);
	cr_assert(atomic_load(&ip.cancel_saw_return),
	          "cancel returned after the handler");
	aa_op_unref(ip.op);
	close_now(file);
	fx_fini(&f);
	gate_fini(&ip.reached);
	gate_fini(&ip.release);
	gate_fini(&ip.cancel_waits);
}

// ---- 10,000 rounds: cancel races a read's completion ----

typedef struct racer {
	pthread_barrier_t *go;
	pthread_barrier_t start;
	pthread_barrier_t end;
	aa_op *_Atomic op;
	atomic_bool stop;
} racer;

static void *
race_cancel(void *arg)
{
	racer *r = arg;
	for (;;) {
		pthread_barrier_wait(&r->start);
		if (atomic_load(&r->stop)) {
			return NULL;
		}
		pthread_barrier_wait(r->go); // with the read's system call
		(void)aa_op_cancel(atomic_load(&r->op), AA_CANCEL_TERMINAL);
		pthread_barrier_wait(&r->end);
	}
}

Test(sample_afile, cancel_races_completion_10000_times)
{
	fixture f;
	pthread_barrier_t go;
	racer r = {.go = &go};
	int won[2] = {0, 0};
	afile *file;
	aa_op *op;
	seen w;
	tally done;
	thr t;
	fx_init(&f, 2);
	tally_init(&done);
	file = open_now(&f);
	seen_init(&w, &done);
	cr_assert_eq(afile_write(file, "r", 1, 0, NULL, seen_cb, &w, &op), 0);
	tally_wait(&done, 1);
	pthread_barrier_init(&go, NULL, 3); // the read, the racer, here
	pthread_barrier_init(&r.start, NULL, 2);
	pthread_barrier_init(&r.end, NULL, 2);
	f.race = &go;
	thr_start(&t, race_cancel, &r);
	for (int i = 0; i < 10000; i++) {
		tally got;
		seen s;
		tally_init(&got);
		seen_init(&s, &got);
		s.keep = true;
		cr_assert_eq(afile_read(file, 1, 0, NULL, seen_cb, &s, &op),
		             0);
		atomic_store(&r.op, op);
		pthread_barrier_wait(&r.start);
		pthread_barrier_wait(&go);
		pthread_barrier_wait(&r.end);
		tally_wait(&got, 1);
		(void)round_outcome(&s, "r", i, won);
		aa_op_unref(op);
		tally_fini(&got);
	}
	atomic_store(&r.stop, true);
	pthread_barrier_wait(&r.start);
	thr_join(&t);
	f.race = NULL;
	close_now(file); // after every read left the barrier
	pthread_barrier_destroy(&go);
	pthread_barrier_destroy(&r.start);
	pthread_barrier_destroy(&r.end);
	test_note("10000 rounds: cancel won %d, the read won %d", won[0],
	          won[1]);
	fx_fini(&f);
	tally_fini(&done);
}

// ---- Destroy with actions pending ----

static void *
free_mgr(void *arg)
{
	afile_mgr_free(arg);
	return NULL;
}

Test(sample_afile, destroy_with_actions_pending)
{
	fixture f;
	tally done;
	seen s[3];
	aa_op *op;
	thr t;
	int fds;
	fx_init(&f, 1);
	tally_init(&done);
	fds = count_fds();
	atomic_store(&f.hold, true);
	for (int i = 0; i < 3; i++) {
		char p[128];
		seen_init(&s[i], &done);
		snprintf(p, sizeof(p), "%s%d", f.path, i);
		cr_assert_eq(afile_open(f.m, p, O_RDWR | O_CREAT, NULL,
		                        seen_cb, &s[i], &op),
		             0);
	}
	gate_wait(&f.held); // one running, two queued on their strands
	thr_start(&t, free_mgr, f.m);
	// The queued ones end at once; the running one when it returns.
	tally_wait(&done, 2);
	gate_open(&f.release);
	thr_join(&t);
	f.m = NULL;
	cr_assert_eq(tally_get(&done), 3, "no callback after destroy");
	cr_assert_eq(count_fds(), fds, "the running open's file was closed");
	for (int i = 0; i < 3; i++) {
		char p[128];
		cr_assert_eq(atomic_load(&s[i].state), AA_CANCELED);
		snprintf(p, sizeof(p), "%s%d", f.path, i);
		unlink(p);
	}
	fx_fini(&f);
	tally_fini(&done);
}
