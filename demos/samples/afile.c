// afile.c: the async file handle sample (Envoy's AsyncFileManager and
// AsyncFileHandle, on a strand per file).
//
// Design notes.
//
// States of an action (`state`, atomic): QUEUED -> RUNNING -> FINISHED,
// or QUEUED -> CANCELLED (cancelled before its system call), or RUNNING
// -> CANCELLED (cancelled during it). Its work item on the file's strand
// has a work function (the system call) and a done callback, which is
// where the op is finished: with the result when FINISHED, CANCELED when
// CANCELLED (undoing what the call did: a cancelled open closes its fd).
// The done callback always runs (AA_ECLOSED when the strand closed), so
// it is also where the action leaves the manager's tracker.
//
// The op uses the cooperative policy; its cancel function decides with
// one compare-and-swap:
// * QUEUED -> CANCELLED: the action is dropped: its function will return
//   without the system call, and the cancel finishes the op CANCELED at
//   once (abort case 1);
// * RUNNING -> CANCELLED: the call finishes, and the done callback ends
//   the op CANCELED instead of delivering the result (case 2);
// * FINISHED: the result won the race; it is delivered, and a cancel on
//   the op while its handler runs waits for it (case 3, the op's rule).
// The work function moves QUEUED -> RUNNING and RUNNING -> FINISHED with
// the same compare-and-swaps, so each race has one winner.
//
// Lifetimes: the action lives in its op's extra memory. The file (its
// strand and fd) is made by open, before the open runs on its strand, and
// freed by the done callback of a close, or of an open that failed or was
// cancelled; that callback runs on the strand, so the strand's free is
// deferred until it returned (the executor's rule).
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "afile.h"

enum { A_QUEUED = 0, A_RUNNING, A_FINISHED, A_CANCELLED };
enum { K_OPEN, K_READ, K_WRITE, K_CLOSE };

static const char *const kind_names[] = {"open", "read", "write", "close"};

struct afile_mgr {
	smp_module base; // first
	aa_executor *pool;
	afile_hook_fn hook;
	void *hook_ctx;
};

struct afile {
	afile_mgr *m;
	aa_executor *strand;
	int fd;
};

typedef struct action {
	smp_node node; // first: the tracker's
	afile_mgr *m;
	afile *f;
	aa_op *op;
	aa_work work;
	atomic_int state;
	int kind;
	int flags;
	uint64_t off;
	int err;      // errno of the system call, or 0
	size_t count; // bytes read or written
	size_t want;  // read: at most this many
	void *buf;    // read: the bytes
	size_t len;
	unsigned char in[]; // open: the path; write: the data
} action;

int
afile_mgr_alloc(afile_mgr **mp, aa_executor *pool)
{
	afile_mgr *m;
	int rv;
	if (mp == NULL || pool == NULL) {
		return AA_EINVAL;
	}
	if ((rv = smp_module_alloc((void **)&m, sizeof(*m), false)) != 0) {
		return rv;
	}
	m->pool = pool;
	*mp = m;
	return 0;
}

void
afile_mgr_set_hook(afile_mgr *m, afile_hook_fn fn, void *ctx)
{
	m->hook = fn;
	m->hook_ctx = ctx;
}

void
afile_mgr_free(afile_mgr *m)
{
	smp_module_free(m, AA_CANCEL_TERMINAL); // NULL: nothing
}

static void
file_free(afile *f)
{
	if (f->fd >= 0) {
		close(f->fd);
	}
	aa_executor_free(f->strand); // deferred when on the strand
	free(f);
}

static void
action_run(void *arg)
{
	action *a = arg;
	int expect = A_QUEUED;
	ssize_t n = 0;
	if (!atomic_compare_exchange_strong(&a->state, &expect, A_RUNNING)) {
		return; // dropped by a cancel (case 1)
	}
	if (a->m->hook != NULL) {
		a->m->hook(a->m->hook_ctx, kind_names[a->kind], a->off);
	}
	switch (a->kind) {
	case K_OPEN:
		a->f->fd =
		    open((const char *)a->in, a->flags | O_CLOEXEC, 0600);
		n = a->f->fd;
		break;
	case K_READ:
		if ((a->buf = malloc(a->want > 0 ? a->want : 1)) == NULL) {
			errno = ENOMEM;
			n = -1;
			break;
		}
		n = pread(a->f->fd, a->buf, a->want, (off_t)a->off);
		break;
	case K_WRITE:
		n = pwrite(a->f->fd, a->in, a->len, (off_t)a->off);
		break;
	default:
		n = close(a->f->fd);
		a->f->fd = -1;
		break;
	}
	a->err = n < 0 ? errno : 0;
	a->count = n < 0 ? 0 : (size_t)n;
	expect = A_RUNNING;
	// Lost to a cancel during the call (case 2): the done callback
	// undoes it.
	(void)atomic_compare_exchange_strong(&a->state, &expect, A_FINISHED);
}

// deliver finishes the op of a FINISHED action with its result.
static void
deliver(action *a)
{
	if (a->err != 0) {
		if (a->kind == K_OPEN) {
			file_free(a->f);
		}
		(void)aa_op_fail(a->op, AA_ESYSTEM, strerror(a->err));
		return;
	}
	switch (a->kind) {
	case K_OPEN:
		(void)aa_op_complete(a->op, &a->f, sizeof(a->f), NULL);
		break;
	case K_READ:
		(void)aa_op_complete(a->op, a->buf, a->count, free);
		a->buf = NULL;
		break;
	case K_WRITE:
		(void)aa_op_complete(a->op, &a->count, sizeof(a->count), NULL);
		break;
	default:
		file_free(a->f);
		(void)aa_op_complete(a->op, NULL, 0, NULL);
		break;
	}
}

static void
action_done(void *arg, int rv)
{
	action *a = arg;
	int expect = A_QUEUED;
	if (rv != 0 &&
	    atomic_compare_exchange_strong(&a->state, &expect, A_CANCELLED)) {
		(void)aa_op_fail(a->op, rv, "the file's queue closed");
	}
	if (atomic_load(&a->state) == A_FINISHED) {
		deliver(a);
	} else {
		// Cancelled: undo what the call did, if it ran.
		free(a->buf);
		if (a->kind == K_OPEN || a->kind == K_CLOSE) {
			file_free(a->f); // a cancelled open closes its fd
		}
		(void)aa_op_canceled(a->op);
	}
	smp_tracker_remove(&a->m->base.tracker, &a->node);
}

static int
action_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	action *a = aa_op_extra(op);
	int expect = A_QUEUED;
	(void)type;
	(void)arg;
	if (atomic_compare_exchange_strong(&a->state, &expect, A_CANCELLED)) {
		(void)aa_op_canceled(op); // case 1: dropped, at once
		return 1;
	}
	expect = A_RUNNING;
	if (atomic_compare_exchange_strong(&a->state, &expect, A_CANCELLED)) {
		return 2; // case 2: the call finishes, its result is dropped
	}
	return 3; // finished: the result is delivered
}

// What an action is asked to do.
typedef struct request {
	int kind;
	int flags;    // open
	uint64_t off; // read, write
	size_t want;  // read
} request;

// enqueue makes an action on f (its input copied) and queues it on f's
// strand.
static int
enqueue(afile *f, request rq, const void *in, size_t len,
        const aa_assoc *assoc, aa_op_cb cb, void *arg, aa_op **opp)
{
	afile_mgr *m = f->m;
	aa_op_provider prov = {
	    .policy = AA_POLICY_COOPERATIVE,
	    .cancel = action_cancel,
	    .cancel_types = AA_CANCEL_TERMINAL,
	};
	aa_op *op;
	action *a;
	int rv;
	if ((rv = smp_start_with_input(&op, &prov, assoc, offsetof(action, in),
	                               in, len)) != 0) {
		return rv;
	}
	a = aa_op_extra(op);
	a->m = m;
	a->f = f;
	a->op = op;
	a->kind = rq.kind;
	a->flags = rq.flags;
	a->off = rq.off;
	a->want = rq.want;
	a->len = len;
	aa_work_init(&a->work, action_run, action_done, a);
	if ((rv = smp_track(op, &m->base.tracker, &a->node)) != 0) {
		return rv;
	}
	if ((rv = aa_work_submit(&a->work, f->strand)) != 0) {
		return smp_untrack_abandon(op, &m->base.tracker, &a->node,
		                           NULL, rv);
	}
	smp_hand_over(op, cb, arg, opp);
	return 0;
}

int
afile_open(afile_mgr *m, const char *path, int flags, const aa_assoc *assoc,
           aa_op_cb cb, void *arg, aa_op **opp)
{
	afile *f;
	int rv;
	if (path == NULL || smp_bad_call(m, NULL, 0, cb, opp)) {
		return AA_EINVAL;
	}
	if ((f = calloc(1, sizeof(*f))) == NULL) {
		return AA_ENOMEM;
	}
	f->m = m;
	f->fd = -1;
	if ((rv = aa_strand_alloc(&f->strand, m->pool)) != 0) {
		free(f);
		return rv;
	}
	rv = enqueue(f, (request){.kind = K_OPEN, .flags = flags}, path,
	             strlen(path) + 1, assoc, cb, arg, opp);
	if (rv != 0) {
		file_free(f);
	}
	return rv;
}

int
afile_write(afile *f, const void *data, size_t len, uint64_t off,
            const aa_assoc *assoc, aa_op_cb cb, void *arg, aa_op **opp)
{
	if (smp_bad_call(f, data, len, cb, opp)) {
		return AA_EINVAL;
	}
	return enqueue(f, (request){.kind = K_WRITE, .off = off}, data, len,
	               assoc, cb, arg, opp);
}

int
afile_read(afile *f, size_t len, uint64_t off, const aa_assoc *assoc,
           aa_op_cb cb, void *arg, aa_op **opp)
{
	if (smp_bad_call(f, NULL, 0, cb, opp)) {
		return AA_EINVAL;
	}
	return enqueue(f, (request){.kind = K_READ, .off = off, .want = len},
	               NULL, 0, assoc, cb, arg, opp);
}

int
afile_close(afile *f, const aa_assoc *assoc, aa_op_cb cb, void *arg,
            aa_op **opp)
{
	if (smp_bad_call(f, NULL, 0, cb, opp)) {
		return AA_EINVAL;
	}
	return enqueue(f, (request){.kind = K_CLOSE}, NULL, 0, assoc, cb, arg,
	               opp);
}
