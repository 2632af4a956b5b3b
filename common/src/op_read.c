// op_read.c: what a user reads of an op, locally and never over the wire:
// its status, results, error and settlement, and the names of states.
//
// Design notes.
//
// Reads without the lock, as op.c's notes ("State") allow: the state is
// an atomic published after the results. The settlement, which may still
// change after the op is final, is read under the op's lock.
#include "op_impl.h"

void *
aa_op_extra(aa_op *op)
{
	return op->extra;
}

aa_state
aa_op_status(const aa_op *op)
{
	return aai_op_load_state(op);
}

const aa_assoc *
aa_op_assoc(const aa_op *op)
{
	return &op->assoc;
}

uint64_t
aa_op_id(const aa_op *op)
{
	return op->id;
}

aa_op_cancel_fn
aai_op_cancel_fn(const aa_op *op)
{
	return op->cancel_fn;
}

int
aa_op_cancel_detail(const aa_op *op)
{
	return atomic_load(&((aa_op *)op)->detail);
}

aa_settlement
aa_op_settlement(const aa_op *op)
{
	aa_op *m = (aa_op *)op;
	aai_mtx_lock(&m->mtx);
	aa_settlement s = (aa_settlement)m->settle;
	aai_mtx_unlock(&m->mtx);
	return s;
}

int
aa_op_result(const aa_op *op, const void **data, size_t *len)
{
	switch (aai_op_load_state(op)) {
	case AA_STARTED:
		return AA_ESTATE;
	case AA_CANCELED:
		return AA_ECANCELED;
	case AA_ERROR:
		return op->err;
	case AA_COMPLETED:
		break;
	}
	if (data != NULL) {
		*data = op->result;
	}
	if (len != NULL) {
		*len = op->result_len;
	}
	return 0;
}

int
aa_op_error(const aa_op *op)
{
	switch (aai_op_load_state(op)) {
	case AA_CANCELED:
		return AA_ECANCELED;
	case AA_ERROR:
		return op->err;
	default:
		return 0;
	}
}

int
aa_op_app_code(const aa_op *op, int32_t *code)
{
	if (aai_op_load_state(op) != AA_ERROR || op->err != AA_EAPP) {
		return AA_ESTATE;
	}
	if (code != NULL) {
		*code = op->app_code;
	}
	return 0;
}

const char *
aa_op_error_msg(const aa_op *op)
{
	if (aai_op_load_state(op) == AA_ERROR && op->errmsg != NULL) {
		return op->errmsg;
	}
	return "";
}

const char *
aa_op_state_name(aa_state s)
{
	switch (s) {
	case AA_STARTED:
		return "started";
	case AA_COMPLETED:
		return "completed";
	case AA_CANCELED:
		return "canceled";
	case AA_ERROR:
		return "error";
	}
	return "?";
}

const char *
aa_settlement_name(aa_settlement s)
{
	static const char *const names[] = {"pending",  "never_started",
	                                    "canceled", "completed",
	                                    "failed",   "unknown"};
	if ((unsigned)s < sizeof(names) / sizeof(names[0])) {
		return names[s];
	}
	return "?";
}
