// retry.h: the middle-level sample with retries (docs/samples.md).
//
// Each call tries the lower layer; when an attempt fails it waits
// (backoff_ms, doubled after each failure) and tries again, at most
// max_attempts times, then fails with the last attempt's error. Cancel
// stops whichever is current, the attempt or the wait, and no attempt
// starts after it. A PARTIAL cancel lets an attempt in flight finish and
// reports its outcome (COMPLETED on success, else CANCELED); TERMINAL
// cancels the attempt too. A refused attempt counts as a failed one.
#ifndef AA_SAMPLE_RETRY_H
#define AA_SAMPLE_RETRY_H

#include <stdint.h>

#include "sample.h"

typedef struct retry retry;

typedef struct retry_policy {
	int max_attempts;    // >= 1
	uint64_t backoff_ms; // wait after the first failure
} retry_policy;

// retry_alloc creates the module on top of lower, with its timer thread.
int retry_alloc(retry **mp, smp_layer lower, retry_policy policy);

// retry_free cancels every pending call and waits until each has ended;
// then no callback of the module runs. Not from inside one of them.
void retry_free(retry *m);

// retry_call starts one call (smp_call_fn's shape). The op's cancel
// detail is the number of attempts started when the cancel came.
int retry_call(void *m, const void *in, size_t len, const aa_assoc *assoc,
               aa_op_cb cb, void *arg, aa_op **opp);

// retry_attempts returns how many attempts a call of the module started
// (a call's op, while it is alive).
int retry_attempts(aa_op *op);

#endif // AA_SAMPLE_RETRY_H
