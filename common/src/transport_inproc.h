// transport_inproc.h: what transport_inproc.c (pipes, their ends and
// owner threads) and transport_inproc_listen.c (the registry of
// listeners, dial, listen, the kill hook) share. The design notes are at
// the top of those two files.
#ifndef AA_TRANSPORT_INPROC_H
#define AA_TRANSPORT_INPROC_H

#include "transport_impl.h"

typedef struct ipipe ipipe;
typedef struct iconn iconn;

// What an end's owner thread is doing (pipe->mtx).
typedef enum owner_state {
	OWNER_NONE,   // not started, or left its loop: nobody takes its batch
	OWNER_AWAKE,  // in its loop: delivering its batch, idle or spinning
	OWNER_AWAY,   // delivering the peer's batch (a hand-over)
	OWNER_ASLEEP, // waiting on its cv
} owner_state;

struct iside {
	aai_tbuf in;       // bytes the other end sent to this one
	pthread_cond_t cv; // wakes this end's owner thread
	iconn *conn;       // this end
	owner_state owner; // this end's owner thread
	bool busy;         // the token: a thread delivers this side's batch
	bool paused;       // asleep because the peer does not take our sends
	bool closed;       // this end was closed or failed
	atomic_uint kicks; // bumped on every append and close: spinners
	// Owner thread only: the adaptive spin.
	uint64_t idle_since; // ns; 0 while not idle
	uint64_t avg_gap;    // ns, average idle gap
};

typedef struct ilistener ilistener;

struct ipipe {
	pthread_mutex_t mtx;
	int refs; // ends not yet torn down
	struct iside side[2];
	// aai_inproc_registry_mtx: the listener it was made through (NULL once
	// that is freed), and its place in the listener's list of live pipes.
	ilistener *l;
	ipipe *next, *prev;
};

struct iconn {
	aai_conn base;
	ipipe *p;
	int s; // my side: I read side[s].in and write side[1 - s].in
	pthread_t thr;
	bool thr_started;
	aai_tbuf work; // the holder of side[s]'s token only
};

struct ilistener {
	aai_listener base;
	struct ilistener *next;
	char *name;
	aai_tp_opts opts;
	uint8_t *hb_frame;
	void (*accept)(void *, aai_conn *);
	void *arg;
	bool registered; // aai_inproc_registry_mtx
	int busy;        // aai_inproc_registry_mtx: accept callbacks running
	ipipe *pipes;    // aai_inproc_registry_mtx: live pipes made through it
	pthread_cond_t cv;
};

// The registry of listeners by name (transport_inproc_listen.c). Lock
// order: aai_inproc_registry_mtx, then a pipe's mtx.
extern pthread_mutex_t aai_inproc_registry_mtx AAI_HIDDEN;
extern ilistener *aai_inproc_registry AAI_HIDDEN;

// aai_inproc_conn_alloc makes side s's end of p (not started).
AAI_HIDDEN iconn *aai_inproc_conn_alloc(ipipe *p, int s, const aai_tp_opts *o);

// aai_inproc_pipe_release drops one end's reference; the last frees p,
// after taking it off its listener's list.
AAI_HIDDEN void aai_inproc_pipe_release(ipipe *p);

// aai_inproc_pipe_unlink takes p out of its listener's list. Expects
// aai_inproc_registry_mtx.
AAI_HIDDEN void aai_inproc_pipe_unlink(ipipe *p);

#endif
