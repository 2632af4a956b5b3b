// lowreal.h: the low-level sample with real cancel (docs/samples.md).
//
// A delayed echo: each call answers with its input after the module's
// delay, on a timer. Cancel really stops the work: it disarms the timer,
// and the op ends CANCELED, unless the timer had fired first (then it
// ends COMPLETED: the provider won the race). A cancelled call has no
// side effect, so its ops honour every cancellation type.
#ifndef AA_SAMPLE_LOWREAL_H
#define AA_SAMPLE_LOWREAL_H

#include <stdint.h>

#include "sample.h"

typedef struct lowreal lowreal;

// lowreal_alloc creates the module and its timer thread.
int lowreal_alloc(lowreal **mp, uint64_t delay_ms);

// lowreal_free cancels every pending call and stops the timer thread;
// afterwards no callback of the module runs. Not from inside one.
void lowreal_free(lowreal *m);

// lowreal_call starts one delayed echo of in (smp_call_fn's shape).
int lowreal_call(void *m, const void *in, size_t len, const aa_assoc *assoc,
                 aa_op_cb cb, void *arg, aa_op **opp);

#endif // AA_SAMPLE_LOWREAL_H
