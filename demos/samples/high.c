// high.c: the high-level sample (c-util's high-level module) with
// cancel-all. It adds no race of its own: the top-level op is the
// pass-through sample's (its design notes), over the retry sample's, and
// cancel-all is the tracker's (sample.c).
#include <stdlib.h>

#include "high.h"
#include "passthru.h"

struct high {
	retry *middle;
	passthru *top;
};

int
high_alloc(high **hp, smp_layer lower, retry_policy policy)
{
	high *h;
	int rv;
	if (hp == NULL) {
		return AA_EINVAL;
	}
	if ((h = calloc(1, sizeof(*h))) == NULL) {
		return AA_ENOMEM;
	}
	if ((rv = retry_alloc(&h->middle, lower, policy)) != 0) {
		free(h);
		return rv;
	}
	if ((rv = passthru_alloc(&h->top,
	                         (smp_layer){retry_call, h->middle})) != 0) {
		retry_free(h->middle);
		free(h);
		return rv;
	}
	*hp = h;
	return 0;
}

void
high_free(high *h)
{
	if (h == NULL) {
		return;
	}
	passthru_free(h->top); // first: its calls hold the middle's
	retry_free(h->middle);
	free(h);
}

int
high_call(void *h, const void *in, size_t len, const aa_assoc *assoc,
          aa_op_cb cb, void *arg, aa_op **opp)
{
	if (h == NULL) {
		return AA_EINVAL;
	}
	return passthru_call(((high *)h)->top, in, len, assoc, cb, arg, opp);
}

int
high_cancel_all(high *h, aa_cancel_type type)
{
	return passthru_cancel_all(h->top, type);
}
