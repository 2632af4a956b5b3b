// passthru.h: the middle-level pass-through sample (docs/samples.md).
//
// Each call starts one call of the lower layer and hands the caller an
// op of its own that ends as the lower one does. Cancellation goes down:
// the op's cancel reaches the lower op through the cancellation slot the
// module passes in the lower call's associated characteristics, with the
// caller's executor and allocator. It also tracks its pending ops, so it
// can cancel all of them.
#ifndef AA_SAMPLE_PASSTHRU_H
#define AA_SAMPLE_PASSTHRU_H

#include "sample.h"

typedef struct passthru passthru;

// passthru_alloc creates the module on top of lower.
int passthru_alloc(passthru **mp, smp_layer lower);

// passthru_free cancels every pending call (TERMINAL) and waits until
// each has ended; then no callback of the module runs. Not from inside
// one of its callbacks.
void passthru_free(passthru *m);

// passthru_call starts one call (smp_call_fn's shape).
int passthru_call(void *m, const void *in, size_t len, const aa_assoc *assoc,
                  aa_op_cb cb, void *arg, aa_op **opp);

// passthru_cancel_all cancels every call pending when it is called (not
// those started meanwhile, e.g. from the handlers it runs) and returns
// how many cancels it passed on.
int passthru_cancel_all(passthru *m, aa_cancel_type type);

#endif // AA_SAMPLE_PASSTHRU_H
