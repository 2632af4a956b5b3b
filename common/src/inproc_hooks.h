// inproc_hooks.h: test hooks of the inproc transport (transport_inproc.c),
// for the replay tool (demos/replay) and the tests only: no public header
// declares them and no production path calls them. They need no other
// internal header, so a tool may include this one alone.
#ifndef AA_INPROC_HOOKS_H
#define AA_INPROC_HOOKS_H

#include <stdbool.h>

// aai_inproc_set_handover turns the hand-over of batches between the two
// ends of an inproc pipe on (the default) or off, process-wide, from the
// next batch on. Off, the callbacks of each end run on that end's own
// thread only: a thread held at a server checkpoint is never the client's.
void aai_inproc_set_handover(bool on);

// aai_inproc_kill makes the listener named name (the URL without
// "inproc://") vanish as a killed process's would: no dial finds it any
// more, and every connection accepted through it is cut at once, with no
// Goodbye (both ends end with AA_ECONNLOST). The listener must still be
// closed and freed by its owner. Returns AA_ENOENT if no listener has
// that name.
int aai_inproc_kill(const char *name);

#endif // AA_INPROC_HOOKS_H
