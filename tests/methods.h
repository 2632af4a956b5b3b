// methods.h: plain server methods for the suites and the server fuzz target
// that need a server doing something ordinary. Each has aa_method_fn's
// signature; register them with aa_server_register.
#ifndef AA_TEST_METHODS_H
#define AA_TEST_METHODS_H

#include <aa/aa.h>
#include <aa/server.h>

// method_echo reports its payload as one progress report, then completes
// with it.
int method_echo(aa_op **opp, void *arg, const aa_call_info *call,
                const void *payload, size_t len, const aa_assoc *assoc);

// method_fail fails at once with AA_EAPP.
int method_fail(aa_op **opp, void *arg, const aa_call_info *call,
                const void *payload, size_t len, const aa_assoc *assoc);

// method_hold stays pending until it is cancelled (by a Cancel, its
// deadline or the end of its connection); it honours every cancel type.
int method_hold(aa_op **opp, void *arg, const aa_call_info *call,
                const void *payload, size_t len, const aa_assoc *assoc);

// method_fail_app fails at once with the application code given as the
// decimal payload (aa_op_fail_app) and the message "app failure".
int method_fail_app(aa_op **opp, void *arg, const aa_call_info *call,
                    const void *payload, size_t len, const aa_assoc *assoc);

// method_self_cancel's real op cancels itself, unasked (a server-side
// cancel: the client sees AA_ESRVCANCEL).
int method_self_cancel(aa_op **opp, void *arg, const aa_call_info *call,
                       const void *payload, size_t len, const aa_assoc *assoc);

#endif // AA_TEST_METHODS_H
