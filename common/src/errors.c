// errors.c: error texts, live-object counters and the counted allocator.
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aai.h"

static const char *const error_texts[] = {
    [0] = "no error",
    [AA_ECANCELED] = "operation cancelled",
    [AA_EALREADY] = "already final or already done",
    [AA_ENOTSUP] = "not supported",
    [AA_ESTATE] = "illegal call in the current state",
    [AA_EINVAL] = "invalid argument",
    [AA_ENOMEM] = "out of memory",
    [AA_ECLOSED] = "object closed",
    [AA_EBUSY] = "resource busy",
    [AA_ETIMEDOUT] = "deadline passed",
    [AA_ECONNLOST] = "connection to the peer lost",
    [AA_EUNAVAIL] = "peer unavailable or shutting down",
    [AA_EPROTO] = "protocol error",
    [AA_EMSGSIZE] = "message too large",
    [AA_ENOENT] = "no such method, id or name",
    [AA_EDEADLK] = "call would deadlock",
    [AA_ELIMIT] = "configured limit reached",
    [AA_EEXIST] = "already exists",
    [AA_ECONNREF] = "connection refused",
    [AA_ECRYPTO] = "TLS or certificate failure",
    [AA_ESYSTEM] = "operating-system call failed",
    [AA_EINTERNAL] = "internal error",
    [AA_EAPP] = "application error (see the op's application code)",
    [AA_ESRVCANCEL] = "cancelled by the server",
};

const char *
aa_strerror(int err)
{
	if (err >= 0 &&
	    (size_t)err < sizeof(error_texts) / sizeof(error_texts[0]) &&
	    error_texts[err] != NULL) {
		return error_texts[err];
	}
	return "unknown error";
}

static atomic_int_fast64_t live_counts[AA_LIVE_NKINDS];
static atomic_uint_fast64_t heap_allocs;

void
aai_live_inc(aa_live_kind kind)
{
	atomic_fetch_add_explicit(&live_counts[kind], 1, memory_order_relaxed);
}

void
aai_live_dec(aa_live_kind kind)
{
	atomic_fetch_sub_explicit(&live_counts[kind], 1, memory_order_relaxed);
}

int64_t
aa_live(aa_live_kind kind)
{
	if ((unsigned)kind >= AA_LIVE_NKINDS) {
		return 0;
	}
	return atomic_load(&live_counts[kind]);
}

int64_t
aa_live_total(void)
{
	int64_t n = 0;
	for (int k = 0; k < AA_LIVE_NKINDS; k++) {
		n += atomic_load(&live_counts[k]);
	}
	return n;
}

uint64_t
aa_heap_allocs(void)
{
	return atomic_load(&heap_allocs);
}

void *
aai_alloc(size_t size)
{
	atomic_fetch_add_explicit(&heap_allocs, 1, memory_order_relaxed);
	return malloc(size);
}

void *
aai_zalloc(size_t size)
{
	atomic_fetch_add_explicit(&heap_allocs, 1, memory_order_relaxed);
	return calloc(1, size);
}

void
aai_free(void *p)
{
	free(p);
}

char *
aai_strdup(const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = aai_alloc(n);
	if (d != NULL) {
		memcpy(d, s, n);
	}
	return d;
}

_Noreturn void
aai_panic(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("aaproxy panic: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	abort();
}

static void
check(int rv, const char *what)
{
	if (rv != 0) {
		aai_panic("%s: %s", what, strerror(rv));
	}
}

void
aai_mtx_init(pthread_mutex_t *m)
{
	check(pthread_mutex_init(m, NULL), "pthread_mutex_init");
}

void
aai_mtx_fini(pthread_mutex_t *m)
{
	check(pthread_mutex_destroy(m), "pthread_mutex_destroy");
}

void
aai_mtx_lock(pthread_mutex_t *m)
{
	check(pthread_mutex_lock(m), "pthread_mutex_lock");
}

void
aai_mtx_unlock(pthread_mutex_t *m)
{
	check(pthread_mutex_unlock(m), "pthread_mutex_unlock");
}

void
aai_cv_init(pthread_cond_t *cv)
{
	check(pthread_cond_init(cv, NULL), "pthread_cond_init");
}

void
aai_cv_fini(pthread_cond_t *cv)
{
	check(pthread_cond_destroy(cv), "pthread_cond_destroy");
}

void
aai_cv_wait(pthread_cond_t *cv, pthread_mutex_t *m)
{
	check(pthread_cond_wait(cv, m), "pthread_cond_wait");
}

void
aai_cv_broadcast(pthread_cond_t *cv)
{
	check(pthread_cond_broadcast(cv), "pthread_cond_broadcast");
}

void
aai_cv_signal(pthread_cond_t *cv)
{
	check(pthread_cond_signal(cv), "pthread_cond_signal");
}
