// aa/op.h: the operation object, the one abstraction every layer shares, in
// process and across the wire (the C form of WinRT's IAsyncOperation and
// c-util's async_op). docs/op.md is the full contract.
//
// An aa_op is created STARTED and makes exactly one transition, to one of
// COMPLETED, CANCELED or ERROR. Its completion handler runs exactly once.
// Everything a caller asks of it (set the handler, status, results, error,
// release) is answered locally.
//
// Ownership: aa_op_alloc returns one reference, owned by the provider (the
// code that implements the operation). A provider that hands the op to a
// caller takes a second reference for it with aa_op_ref. Each side drops
// its own with aa_op_unref; the last one frees the op. Releasing a started
// op does not cancel it. aa_op_unref never blocks.
#ifndef AA_OP_H
#define AA_OP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <aa/alloc.h>
#include <aa/cancel.h>
#include <aa/executor.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct aa_op aa_op;

typedef enum aa_state {
	AA_STARTED = 0,
	AA_COMPLETED = 1,
	AA_CANCELED = 2,
	AA_ERROR = 3,
} aa_state;

// What a cancel does, chosen by the provider when it creates the op.
typedef enum aa_cancel_policy {
	// The op becomes CANCELED inside the cancel call, its handler runs,
	// and the provider's later finish is absorbed (c-util's fake cancel,
	// the Async-Async client op).
	AA_POLICY_IMMEDIATE = 0,
	// The provider is told and decides: the op stays STARTED until the
	// provider finishes it, CANCELED or, if it won the race, COMPLETED.
	AA_POLICY_COOPERATIVE = 1,
} aa_cancel_policy;

// The server's (or provider's) real outcome, once known. For an op that was
// not cancelled it is its own final state. For an op cancelled under the
// immediate policy it is what the provider's absorbed finish said.
typedef enum aa_settlement {
	AA_SETTLE_PENDING = 0,       // not known yet
	AA_SETTLE_NEVER_STARTED = 1, // the real work never started
	AA_SETTLE_CANCELED = 2,      // the real work was cancelled
	AA_SETTLE_COMPLETED = 3,     // the real work completed (anyway)
	AA_SETTLE_FAILED = 4,        // the real work failed
	AA_SETTLE_UNKNOWN = 5,       // cannot be known (e.g. connection lost)
} aa_settlement;

typedef void (*aa_op_cb)(aa_op *op, void *arg);
typedef void (*aa_op_progress_cb)(aa_op *op, void *arg, const void *data,
                                  size_t len);

// The provider's cancel function. Called at most once per op, never under
// the op's lock, from the thread that called aa_op_cancel. Its return value
// is a provider-defined detail of the cancel (for the client layer: which
// timeline applied), kept in the op for aa_op_cancel_detail.
typedef int (*aa_op_cancel_fn)(aa_op *op, aa_cancel_type type, void *arg);

// The provider's after-cancel function (optional): the slow part of a
// cancel, such as telling a peer. Called once, right after the cancel
// function, on the same thread, and after the completion handler was
// delivered (run inline, or posted to the associated executor) when the
// cancel made the op final: the user's handler never waits for it. Not
// called when the cancel function was not.
typedef void (*aa_op_after_cancel_fn)(aa_op *op, void *arg);

// Releases a result buffer handed to aa_op_complete.
typedef void (*aa_free_fn)(void *ptr);

// The associated characteristics of a handler (Boost.Asio's asynchronous
// agents): where the handler runs, where per-operation memory comes from,
// and how a parent cancels the op. Every field may be NULL: inline
// execution, malloc, no parent. A composed operation passes its own
// associated characteristics on to its children, with its own slot.
typedef struct aa_assoc {
	aa_executor *executor;
	const aa_allocator *allocator;
	aa_cancel_slot *slot;
} aa_assoc;

// How a provider creates an op.
typedef struct aa_op_provider {
	aa_op_cancel_fn cancel; // may be NULL: cancel only flips state
	void *arg;              // passed to cancel
	aa_cancel_policy policy;
	unsigned cancel_types; // aa_cancel_type mask it honours
	size_t extra;          // bytes of provider memory in the op
	aa_op_after_cancel_fn after_cancel; // may be NULL; gets arg
} aa_op_provider;

// ---- Caller side ----

// aa_op_ref takes one more reference to op.
void aa_op_ref(aa_op *op);

// aa_op_unref drops a reference; the last one frees op. Never blocks.
void aa_op_unref(aa_op *op);

// aa_op_status returns the op's state now.
aa_state aa_op_status(const aa_op *op);

// aa_op_set_handler sets the completion handler, once: AA_EBUSY when one is
// set already. On a final op it runs before this returns (or is posted to
// the associated executor).
int aa_op_set_handler(aa_op *op, aa_op_cb cb, void *arg);

// aa_op_set_progress_handler sets the progress handler, once (AA_EBUSY). It
// runs on the provider's thread, only while the op is STARTED.
int aa_op_set_progress_handler(aa_op *op, aa_op_progress_cb cb, void *arg);

// aa_op_set_settle_handler sets a handler that runs once the op is final,
// its settlement is known and its completion handler has returned (inline
// if all three hold already): it always runs after the completion
// handler, so an op whose completion handler is never set never runs it.
// AA_EBUSY when set already.
int aa_op_set_settle_handler(aa_op *op, aa_op_cb cb, void *arg);

// aa_op_result gives the result of a COMPLETED op: 0; AA_ECANCELED for a
// cancelled op, the op's error for a failed one, AA_ESTATE for a started
// one. The buffer belongs to the op and lives as long as it.
int aa_op_result(const aa_op *op, const void **data, size_t *len);

// aa_op_error returns 0 for a started or completed op, AA_ECANCELED for a
// cancelled one, and the error code of a failed one.
int aa_op_error(const aa_op *op);

// aa_op_error_msg returns the failure message of a failed op, or "".
const char *aa_op_error_msg(const aa_op *op);

// aa_op_app_code gives, in *code, the application's own failure code of an
// op that failed with AA_EAPP (aa_op_fail_app): 0; AA_ESTATE when the op
// did not fail with an application error. Application codes are any
// int32 and are never AA_E* codes, even when the numbers are equal.
int aa_op_app_code(const aa_op *op, int32_t *code);

// aa_op_cancel asks for cancellation of type. 0 when it cancelled the op
// (immediate policy) or told the provider (cooperative); AA_EALREADY when
// the op is final; AA_ENOTSUP when the provider does not honour type;
// AA_EINVAL for a bad type. May be called any number of times from any
// thread. A handler without executor runs inline, before cancel returns;
// a handler running on another thread is waited for, unless cancel is
// called from inside it.
int aa_op_cancel(aa_op *op, aa_cancel_type type);

// aa_op_cancel_detail returns what the provider's cancel function returned
// for this op's cancel, or -1 when it was never called.
int aa_op_cancel_detail(const aa_op *op);

// aa_op_settlement returns the op's settlement now.
aa_settlement aa_op_settlement(const aa_op *op);

// aa_op_assoc returns the associated characteristics the op was made with.
const aa_assoc *aa_op_assoc(const aa_op *op);

// aa_op_id returns a process-unique number for traces (never 0).
uint64_t aa_op_id(const aa_op *op);

// ---- Provider side ----

// aa_op_alloc creates a STARTED op, its memory (and prov->extra bytes of
// provider memory) from assoc's allocator; assoc may be NULL. When assoc
// has a slot the op connects to it until it is final (AA_EBUSY if the slot
// is taken); a parent's emit may then cancel it at once, so the provider's
// cancel function may run before aa_op_alloc returns (on zeroed extra
// memory): it should find what it needs through prov->arg.
int aa_op_alloc(aa_op **opp, const aa_op_provider *prov,
                const aa_assoc *assoc);

// aa_op_extra returns the provider memory (prov->extra bytes, zeroed).
void *aa_op_extra(aa_op *op);

// aa_op_complete finishes op COMPLETED with a result buffer the op takes
// over (release frees it; NULL when the provider keeps it alive as long as
// the op, e.g. in the extra memory). AA_EALREADY when the op was final: the
// finish is absorbed, the buffer released, the settlement recorded.
int aa_op_complete(aa_op *op, void *data, size_t len, aa_free_fn release);

// aa_op_fail finishes op in ERROR with err (a positive code) and a message
// (copied, may be NULL). AA_EALREADY as for aa_op_complete.
int aa_op_fail(aa_op *op, int err, const char *msg);

// aa_op_fail_app finishes op in ERROR with an application failure: the
// op's error is AA_EAPP and code (any int32, its own error space) is read
// back with aa_op_app_code. msg is copied, may be NULL. AA_EALREADY as for
// aa_op_complete. aa_op_fail(op, AA_EAPP, msg) is the same with code 0.
int aa_op_fail_app(aa_op *op, int32_t code, const char *msg);

// aa_op_canceled finishes op CANCELED. AA_EALREADY as for aa_op_complete.
int aa_op_canceled(aa_op *op);

// aa_op_progress runs the progress handler with data, if the op is still
// STARTED and has one; 0, or AA_EALREADY when the op is final. It never
// waits: while the handler runs on another thread, the report is copied
// and handed to that thread (the latest wins; AA_ENOMEM if no copy).
int aa_op_progress(aa_op *op, const void *data, size_t len);

// aa_op_settle records the real outcome explicitly, for outcomes that no
// finish reports (never started, unknown); the first settlement wins:
// AA_EALREADY afterwards.
int aa_op_settle(aa_op *op, aa_settlement s);

// aa_op_state_name returns "started", "completed", "canceled" or "error".
const char *aa_op_state_name(aa_state s);

// aa_settlement_name returns "pending", "never_started", "canceled",
// "completed", "failed" or "unknown".
const char *aa_settlement_name(aa_settlement s);

#ifdef __cplusplus
}
#endif
#endif // AA_OP_H
