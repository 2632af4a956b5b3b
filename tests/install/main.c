// The install check: a program outside the aaproxy tree that creates an op,
// cancels it and checks that nothing is left alive. Exits non-zero on any
// failure.
#include <aa/aa.h>
#include <stdio.h>

#include "check.h"

int
main(void)
{
	aa_op_provider prov = {
	    .policy = AA_POLICY_IMMEDIATE,
	    .cancel_types = AA_CANCEL_ALL,
	};
	aa_op *op;
	int rv;

	if ((rv = aa_op_alloc(&op, &prov, NULL)) != 0) {
		printf("FAIL: aa_op_alloc: %s\n", aa_strerror(rv));
		return 1;
	}
	check(aa_op_status(op) == AA_STARTED, "a new op is started");
	check(aa_op_cancel(op, AA_CANCEL_TERMINAL) == 0, "cancel returns 0");
	check(aa_op_status(op) == AA_CANCELED, "the op is canceled");
	check(aa_op_complete(op, NULL, 0, NULL) == AA_EALREADY,
	      "a late completion is absorbed");
	aa_op_unref(op);
	check(aa_live_total() == 0, "no library object is left alive");
	printf("install check: %s\n", failures == 0 ? "passed" : "FAILED");
	return failures == 0 ? 0 : 1;
}
