// aa/checkpoint.h: named checkpoints (DESIGN §7). The library calls the
// installed checkpoint function at named points of its racy paths (for
// example "op.cancel_wait", "client.before_submit"), on the thread that
// reached them. A test or the replay tool installs a function that records
// the point or holds the thread there (on a gate) until the scenario lets it
// go, which forces an interleaving without sleeps.
//
// With no function installed a checkpoint costs one relaxed atomic load and
// a predictable branch. docs/checkpoints.md lists every name.
#ifndef AA_CHECKPOINT_H
#define AA_CHECKPOINT_H

#ifdef __cplusplus
extern "C" {
#endif

// A checkpoint function: name is a static string, subject the object that
// reached it (an aa_op, a connection, ...), or NULL.
typedef void (*aa_checkpoint_fn)(void *arg, const char *name, void *subject);

// aa_checkpoint_set installs fn (NULL removes it) for the whole process.
// Install it before the threads that reach checkpoints start, and remove
// it after they are done: the pair is read without a lock.
void aa_checkpoint_set(aa_checkpoint_fn fn, void *arg);

#ifdef __cplusplus
}
#endif
#endif // AA_CHECKPOINT_H
