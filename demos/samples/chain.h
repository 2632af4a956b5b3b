// chain.h: the middle-level sample with an async chain (docs/samples.md).
//
// Each call runs two steps: the first on the input, the second, started
// from the first one's handler, on the first one's result; the call ends
// with the second one's result. Cancel reaches whichever step is
// current; a cancel between the steps stops the chain before step two.
#ifndef AA_SAMPLE_CHAIN_H
#define AA_SAMPLE_CHAIN_H

#include "sample.h"

typedef struct chain chain;

// chain_alloc creates the module over two lower layers.
int chain_alloc(chain **mp, smp_layer step1, smp_layer step2);

// chain_free cancels every pending call and waits until each has ended.
// Not from inside one of its callbacks.
void chain_free(chain *m);

// chain_call starts one chain (smp_call_fn's shape). The op's cancel
// detail is the step (1 or 2) that was current when the cancel came.
int chain_call(void *m, const void *in, size_t len, const aa_assoc *assoc,
               aa_op_cb cb, void *arg, aa_op **opp);

#endif // AA_SAMPLE_CHAIN_H
