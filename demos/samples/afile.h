// afile.h: the async file handle sample (docs/samples.md), Envoy's
// AsyncFileManager pattern on the library's executors.
//
// A file's actions (open, read, write, close) are each an aa_op. They are
// queued on the file's own strand over the manager's pool, so they run
// one at a time and in order, and an action started from another one's
// handler runs next on the same thread (chaining). Cancelling an action
// is Envoy's abort, with its three cases: a queued action is dropped (its
// system call never runs; CANCELED at once); a running action finishes
// but its result is not delivered (CANCELED when it returns; a cancelled
// open closes the file it opened); a handler already running is waited
// for (the op's own rule).
#ifndef AA_SAMPLE_AFILE_H
#define AA_SAMPLE_AFILE_H

#include <stdint.h>

#include "sample.h"

typedef struct afile_mgr afile_mgr;
typedef struct afile afile;

// A hook that runs on the pool thread right before each action's system
// call, with the action's name and offset: tests hold actions with it.
typedef void (*afile_hook_fn)(void *ctx, const char *action, uint64_t off);

// afile_mgr_alloc creates a manager whose actions run on pool.
int afile_mgr_alloc(afile_mgr **mp, aa_executor *pool);

// afile_mgr_set_hook installs the hook (before any action).
void afile_mgr_set_hook(afile_mgr *m, afile_hook_fn fn, void *ctx);

// afile_mgr_free cancels every pending action and waits until each has
// ended. Close every file before; not from inside an action's handler.
void afile_mgr_free(afile_mgr *m);

// afile_open opens path (open(2) flags, mode 0600). Its result is the
// file: `afile *f = *(afile *const *)data`.
int afile_open(afile_mgr *m, const char *path, int flags,
               const aa_assoc *assoc, aa_op_cb cb, void *arg, aa_op **opp);

// afile_write writes len bytes at off; the result is the count written
// (a size_t).
int afile_write(afile *f, const void *data, size_t len, uint64_t off,
                const aa_assoc *assoc, aa_op_cb cb, void *arg, aa_op **opp);

// afile_read reads up to len bytes at off; the result is the bytes read.
int afile_read(afile *f, size_t len, uint64_t off, const aa_assoc *assoc,
               aa_op_cb cb, void *arg, aa_op **opp);

// afile_close closes f, after every action queued before it; f is gone
// once it ended (whatever its outcome), and nothing may be queued on f
// after it.
int afile_close(afile *f, const aa_assoc *assoc, aa_op_cb cb, void *arg,
                aa_op **opp);

#endif // AA_SAMPLE_AFILE_H
