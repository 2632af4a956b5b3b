// aa/cancel.h: cancellation types, and Boost.Asio's cancellation signal and
// slot: a one-producer / one-consumer pair through which a parent's cancel
// request reaches whichever child operation is current.
//
// The parent owns an aa_cancel_signal and passes its slot (in an aa_assoc)
// to the child operation it starts. The child connects a handler to the
// slot while it runs and disconnects it when it becomes final. The parent
// emits the signal with a cancellation type; the connected handler, if any,
// runs synchronously inside aa_cancel_signal_emit.
//
// Unlike Asio's, these are thread-safe: emit may race with connect and
// disconnect on other threads. aa_cancel_slot_disconnect waits until an emit
// that is running the handler on another thread has returned, so that
// after disconnect returns the handler is not running and will not run.
#ifndef AA_CANCEL_H
#define AA_CANCEL_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

// Cancellation types, as Boost.Asio defines them. A request names the
// weakest guarantee the requester can live with; an operation that offers a
// stronger guarantee satisfies a weaker request (TOTAL satisfies PARTIAL
// and TERMINAL; PARTIAL satisfies TERMINAL).
typedef enum aa_cancel_type {
	AA_CANCEL_NONE = 0,
	AA_CANCEL_TERMINAL = 1, // afterwards the op's object is only safe to
	                        // close or destroy
	AA_CANCEL_PARTIAL = 2,  // well-defined side effects, reported by the
	                        // op's result
	AA_CANCEL_TOTAL = 4,    // no observable side effects
	AA_CANCEL_ALL = 7,
} aa_cancel_type;

// aa_cancel_supports says whether an operation that offers the types in
// mask (a bitwise OR of aa_cancel_type) honours a request of type t.
bool aa_cancel_supports(unsigned mask, aa_cancel_type t);

// aa_cancel_type_name returns "terminal", "partial", "total" or "none".
const char *aa_cancel_type_name(aa_cancel_type t);

typedef struct aa_cancel_signal aa_cancel_signal;
typedef struct aa_cancel_slot aa_cancel_slot;

// A slot handler: runs inside emit with the emitted type.
typedef void (*aa_cancel_handler_fn)(void *arg, aa_cancel_type type);

// aa_cancel_signal_alloc creates a signal with an empty slot.
int aa_cancel_signal_alloc(aa_cancel_signal **sigp);

// aa_cancel_signal_free destroys the signal; its slot must be empty.
void aa_cancel_signal_free(aa_cancel_signal *sig);

// aa_cancel_signal_slot returns the signal's slot (one per signal).
aa_cancel_slot *aa_cancel_signal_slot(aa_cancel_signal *sig);

// aa_cancel_signal_emit runs the connected handler with type, returning 0,
// or AA_ENOENT when no handler is connected, AA_EINVAL for a bad type.
int aa_cancel_signal_emit(aa_cancel_signal *sig, aa_cancel_type type);

// aa_cancel_slot_connect installs a handler; AA_EBUSY if one is connected.
int aa_cancel_slot_connect(aa_cancel_slot *slot, aa_cancel_handler_fn fn,
                           void *arg);

// aa_cancel_slot_disconnect removes the handler if it is (fn, arg), after
// waiting for an emit running it on another thread; returns 0, or
// AA_ENOENT when (fn, arg) was not the connected handler.
int aa_cancel_slot_disconnect(aa_cancel_slot *slot, aa_cancel_handler_fn fn,
                              void *arg);

// aa_cancel_slot_is_connected says whether a handler is connected.
bool aa_cancel_slot_is_connected(aa_cancel_slot *slot);

#ifdef __cplusplus
}
#endif
#endif // AA_CANCEL_H
