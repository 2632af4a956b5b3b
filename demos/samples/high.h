// high.h: the high-level sample and cancel-all (docs/samples.md).
//
// The module an application talks to: each call is the top-level
// operation handed to the user, made of a pass-through op over the
// retrying middle layer over any low-level layer (a local blocking call,
// a timer, or a remote call through the proxy). The module tracks every
// pending call and can cancel all of them at once.
#ifndef AA_SAMPLE_HIGH_H
#define AA_SAMPLE_HIGH_H

#include "retry.h"

typedef struct high high;

// high_alloc builds the stack: retries (policy) over lower, and the
// top-level ops over those.
int high_alloc(high **hp, smp_layer lower, retry_policy policy);

// high_free cancels every pending call and waits until each has ended;
// then no callback of the module runs. Not from inside one of them.
void high_free(high *h);

// high_call starts one top-level call (smp_call_fn's shape).
int high_call(void *h, const void *in, size_t len, const aa_assoc *assoc,
              aa_op_cb cb, void *arg, aa_op **opp);

// high_cancel_all cancels every call pending when it is called, safely
// against calls finishing at the same moment and against calls started
// meanwhile (from the handlers it runs, or other threads), which it
// leaves alone. Returns how many cancels it passed on.
int high_cancel_all(high *h, aa_cancel_type type);

#endif // AA_SAMPLE_HIGH_H
