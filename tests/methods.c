// methods.c: see methods.h.
#include <stdlib.h>
#include <string.h>

#include "methods.h"

int
method_echo(aa_op **opp, void *arg, const aa_call_info *call,
            const void *payload, size_t len, const aa_assoc *assoc)
{
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL,
	                     .extra = len};
	(void)arg;
	(void)call;
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv == 0) {
		if (len > 0) {
			memcpy(aa_op_extra(*opp), payload, len);
		}
		(void)aa_op_progress(*opp, payload, len);
		aa_op_complete(*opp, aa_op_extra(*opp), len, NULL);
	}
	return rv;
}

int
method_fail(aa_op **opp, void *arg, const aa_call_info *call,
            const void *payload, size_t len, const aa_assoc *assoc)
{
	aa_op_provider pv = {.policy = AA_POLICY_IMMEDIATE,
	                     .cancel_types = AA_CANCEL_ALL};
	(void)arg;
	(void)call;
	(void)payload;
	(void)len;
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv == 0) {
		aa_op_fail(*opp, AA_EAPP, "failed on purpose");
	}
	return rv;
}

static int
hold_cancel(aa_op *op, aa_cancel_type type, void *arg)
{
	(void)type;
	(void)arg;
	aa_op_canceled(op);
	return 0;
}

int
method_hold(aa_op **opp, void *arg, const aa_call_info *call,
            const void *payload, size_t len, const aa_assoc *assoc)
{
	aa_op_provider pv = {.cancel = hold_cancel,
	                     .policy = AA_POLICY_COOPERATIVE,
	                     .cancel_types = AA_CANCEL_ALL};
	(void)arg;
	(void)call;
	(void)payload;
	(void)len;
	return aa_op_alloc(opp, &pv, assoc);
}

int
method_fail_app(aa_op **opp, void *arg, const aa_call_info *call,
                const void *payload, size_t len, const aa_assoc *assoc)
{
	char buf[32] = {0};
	memcpy(buf, payload, len < sizeof(buf) - 1 ? len : sizeof(buf) - 1);
	aa_op_provider pv = {.cancel_types = AA_CANCEL_ALL};
	(void)arg;
	(void)call;
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv == 0) {
		(void)aa_op_fail_app(*opp, (int32_t)strtol(buf, NULL, 10),
		                     "app failure");
	}
	return rv;
}

int
method_self_cancel(aa_op **opp, void *arg, const aa_call_info *call,
                   const void *payload, size_t len, const aa_assoc *assoc)
{
	aa_op_provider pv = {.cancel_types = AA_CANCEL_ALL};
	(void)arg;
	(void)call;
	(void)payload;
	(void)len;
	int rv = aa_op_alloc(opp, &pv, assoc);
	if (rv == 0) {
		(void)aa_op_canceled(*opp);
	}
	return rv;
}
