// checkpoint.c: the process-wide checkpoint hook (see aa/checkpoint.h).
#include "aai.h"

_Atomic(aa_checkpoint_fn) aai_checkpoint_fn;
static void *_Atomic checkpoint_arg;

void
aa_checkpoint_set(aa_checkpoint_fn fn, void *arg)
{
	atomic_store(&checkpoint_arg, arg);
	atomic_store(&aai_checkpoint_fn, fn);
}

void
aai_checkpoint_call(const char *name, void *subject)
{
	aa_checkpoint_fn fn = atomic_load(&aai_checkpoint_fn);
	if (fn != NULL) {
		fn(atomic_load(&checkpoint_arg), name, subject);
	}
}
