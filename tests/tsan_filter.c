// tsan_filter.c: a ThreadSanitizer report filter, preloaded (LD_PRELOAD) into
// every process of the TSan phase: the suites and the demo processes that
// tests/test_demo.c starts. docs/building.md explains why.
//
// libnng 1.5.2 (Debian's libnng1) is not built with ThreadSanitizer: TSan
// sees none of its own memory accesses and none of the ordering its
// atomics give, only the libc calls it makes (pthread_mutex_*, memcpy,
// free), which TSan's interceptors record as accesses. Two such calls on
// nng's own memory then look unordered although nng orders them (seen:
// nng's reaper thread destroying the mutex of a dialer that a failed
// aai_dial had locked, from nng code on both sides).
//
// The filter drops a data-race report only when, for every access in it,
// the code that made the access is libnng: the innermost frame outside
// TSan's own interceptors is in libnng. A race where aaproxy's code makes
// one of the accesses (also a callback that nng's thread runs) is kept.
// Each dropped report leaves one line on stderr saying so.
//
// Why not a suppressions file: TSan's race: pattern matches a module in
// any frame of either stack, which would also hide our callbacks called
// from nng's threads; race_top: sees the interceptor frame on top, and
// called_from_lib: also drops the synchronisation nng's mutexes give,
// which makes false reports in our own code.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef uintptr_t uptr;

// The report debugging API of libtsan (tsan_debugging.cpp).
int __tsan_get_report_data(void *report, const char **description, int *count,
                           int *stack_count, int *mop_count, int *loc_count,
                           int *mutex_count, int *thread_count,
                           int *unique_tid_count, void **sleep_trace,
                           uptr trace_size);
int __tsan_get_report_mop(void *report, uptr idx, int *tid, void **addr,
                          int *size, int *write, int *atomic, void **trace,
                          uptr trace_size);

#define TRACE_MAX 64

static bool
in_module(void *pc, const char *name)
{
	Dl_info info;
	return dladdr(pc, &info) != 0 && info.dli_fname != NULL &&
	       strstr(info.dli_fname, name) != NULL;
}

// access_in_nng says whether the innermost frame of the access that is not
// one of TSan's interceptors lies in libnng.
static bool
access_in_nng(void *report, int idx)
{
	void *trace[TRACE_MAX] = {0};
	void *addr;
	int tid, size, write, atomic;

	if (__tsan_get_report_mop(report, (uptr)idx, &tid, &addr, &size,
	                          &write, &atomic, trace, TRACE_MAX) == 0) {
		return false;
	}
	for (int i = 0; i < TRACE_MAX && trace[i] != NULL; i++) {
		if (in_module(trace[i], "libtsan")) {
			continue;
		}
		return in_module(trace[i], "libnng.so");
	}
	return false;
}

// libtsan calls __tsan::OnReport for every report, through its PLT, so
// that a program can filter them; true drops the report.
bool
OnReport(const void *rep,
         bool suppressed) __asm__("_ZN6__tsan8OnReportEPKNS_10ReportDescEb");

bool
OnReport(const void *rep, bool suppressed)
{
	void *report = (void *)rep;
	void *sleep_trace[1];
	const char *what = NULL;
	int count, stacks, mops, locs, mutexes, threads, tids;

	if (suppressed) {
		return true;
	}
	if (__tsan_get_report_data(report, &what, &count, &stacks, &mops,
	                           &locs, &mutexes, &threads, &tids,
	                           sleep_trace, 1) == 0 ||
	    what == NULL || strcmp(what, "data-race") != 0 || mops == 0) {
		return false;
	}
	for (int i = 0; i < mops; i++) {
		if (!access_in_nng(report, i)) {
			return false;
		}
	}
	fprintf(stderr, "tsan_filter: dropped a data race between two "
	                "accesses made by libnng (uninstrumented)\n");
	return true;
}
