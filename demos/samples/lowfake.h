// lowfake.h: the low-level sample with fake cancel (docs/samples.md).
//
// Wraps work that cannot be cancelled: a blocking call, run on a pool.
// Cancel completes the caller at once as CANCELED; the module lets the
// real call finish and cleans up after it (its result becomes the op's
// settlement). A call cancelled before its blocking call began never
// makes it (settlement never_started).
#ifndef AA_SAMPLE_LOWFAKE_H
#define AA_SAMPLE_LOWFAKE_H

#include "sample.h"

// The blocking call: 0 and an output buffer the module frees with free(),
// or a positive error code.
typedef int (*lowfake_blocking_fn)(void *ctx, const void *in, size_t len,
                                   void **out, size_t *outlen);

typedef struct lowfake lowfake;

// lowfake_alloc creates the module; its blocking calls run on pool.
int lowfake_alloc(lowfake **mp, aa_executor *pool, lowfake_blocking_fn fn,
                  void *ctx);

// lowfake_free cancels every pending call (CANCELED at once) and waits
// until the blocking calls in progress have returned; then no callback
// of the module runs. Not from inside one of its callbacks.
void lowfake_free(lowfake *m);

// lowfake_call starts one blocking call on a copy of in. Its ops honour
// only AA_CANCEL_TERMINAL: the blocking call's side effects still happen,
// so a PARTIAL or TOTAL request is refused (AA_ENOTSUP, no cancellation
// occurs). The shape of smp_call_fn.
int lowfake_call(void *m, const void *in, size_t len, const aa_assoc *assoc,
                 aa_op_cb cb, void *arg, aa_op **opp);

#endif // AA_SAMPLE_LOWFAKE_H
