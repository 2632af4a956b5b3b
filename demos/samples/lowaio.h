// lowaio.h: the low-level sample with real cancel on an nng aio
// (docs/samples.md).
//
// A delayed echo, as lowreal's, but the work is an nng asynchronous
// operation (an nng_aio running nng_sleep_aio): each call answers with
// its input after the module's delay. Cancel really stops the work: it
// aborts the aio with nng_aio_cancel, and nng's callback ends the op
// CANCELED, unless the sleep had expired first (then it ends COMPLETED:
// the provider won the race). A cancelled sleep has no side effect, so
// its ops honour every cancellation type. The handler runs on nng's
// callback thread, or on the caller's associated executor.
#ifndef AA_SAMPLE_LOWAIO_H
#define AA_SAMPLE_LOWAIO_H

#include <stdint.h>

#include "sample.h"

typedef struct lowaio lowaio;

// lowaio_alloc creates the module; delay_ms is at most INT32_MAX
// (nng's duration), else AA_EINVAL.
int lowaio_alloc(lowaio **mp, uint64_t delay_ms);

// lowaio_free cancels every pending call and waits until each has
// ended; afterwards no callback of the module runs. Not from inside one.
void lowaio_free(lowaio *m);

// lowaio_call starts one delayed echo of in (smp_call_fn's shape).
int lowaio_call(void *m, const void *in, size_t len, const aa_assoc *assoc,
                aa_op_cb cb, void *arg, aa_op **opp);

#endif // AA_SAMPLE_LOWAIO_H
