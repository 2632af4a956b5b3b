// transport_impl.h: what transport.c shares with its backends
// (transport_sock.c, transport_nng.c, transport_inproc.c). Not used outside
// the transport.
#ifndef AA_TRANSPORT_IMPL_H
#define AA_TRANSPORT_IMPL_H

#include <nng/nng.h>
#include <nng/supplemental/util/platform.h>

#include "aai.h"
#include "transport.h"

#define AAI_TP_HDR 4 // big-endian frame length before each frame

// How long a connection dropped past send_max may take to write its last
// frame (limit_frame) before it is closed anyway (transport.h).
#define AAI_TP_LINGER_MS 1000

// A growable byte buffer; it keeps its memory (no shrink), so that steady
// state allocates nothing.
typedef struct aai_tbuf {
	uint8_t *p;
	size_t len;
	size_t cap;
} aai_tbuf;

int aai_tbuf_reserve(aai_tbuf *b, size_t need);
void aai_tbuf_fini(aai_tbuf *b);

// aai_tbuf_put_frame appends header + frame (encoded by encode, or copied
// from data when encode is NULL).
int aai_tbuf_put_frame(aai_tbuf *b, size_t len, const void *data,
                       void (*encode)(void *ctx, uint8_t *dst), void *ctx);

typedef struct aai_conn_ops {
	void (*start)(aai_conn *c); // issue the first receive
	int (*send)(aai_conn *c, size_t len, const void *data,
	            void (*encode)(void *ctx, uint8_t *dst), void *ctx);
	void (*abort)(aai_conn *c); // abort I/O; never blocks, no callback
	// teardown: release everything; from_rx means on the receive thread
	// inside the receive path (deferred free).
	void (*teardown)(aai_conn *c, bool from_rx);
} aai_conn_ops;

// The part of a connection common to all backends, embedded first.
struct aai_conn {
	const aai_conn_ops *ops;
	uint64_t id;
	size_t max_frame;
	atomic_int heartbeat_ms; // aai_conn_set_heartbeat may lower them
	atomic_int silence_ms;
	size_t send_pause; // flow control (aai_tp_opts)
	size_t send_max;
	aai_tp_budget *budget;
	atomic_bool rx_paused; // not reading: the peer does not read ours
	uint8_t *hb_frame;     // owned copy
	size_t hb_len;
	uint8_t *limit_frame; // owned copy, or NULL
	size_t limit_len;
	nng_aio *linger; // with limit_frame: the drop's linger timer

	pthread_mutex_t mtx; // guards the fields below (and nng send buffers)
	pthread_cond_t cv;   // rx_done
	aai_conn_cbs cbs;
	void *arg;
	bool started;
	bool closing; // close asked or failure seen
	int err;      // first reason for going down
	bool rx_done; // down delivered (or never will be)
	bool free_deferred;
	bool in_rx;     // the receive path runs callbacks
	bool lingering; // dropped past send_max: only the last frame leaves
	int failing;    // aai_conn_fail calls still running
	pthread_t rx_thread;
	int end_err; // aai_conn_end_batch: set and read on the rx thread

	atomic_bool stop_rx; // checked between frames
	atomic_bool hb_suppressed;
	atomic_uint_fast64_t last_tx_ms;
	atomic_uint_fast64_t last_rx_ms;
	nng_aio *timer;
};

int aai_conn_base_init(aai_conn *c, const aai_conn_ops *ops,
                       const aai_tp_opts *o);
void aai_conn_base_fini(aai_conn *c);

// aai_conn_quiesce waits until no aai_conn_fail (e.g. a close on another
// thread) still runs: backends call it in teardown before freeing c.
void aai_conn_quiesce(aai_conn *c);

// aai_conn_stop_timers stops c's heartbeat and linger timers (teardown,
// before aai_conn_quiesce).
void aai_conn_stop_timers(aai_conn *c);

// aai_conn_linger_locked starts the drop's linger: it records AA_ELIMIT as
// the reason (if none yet), stops delivering frames and arms the linger
// timer, whose end fails c with AA_ELIMIT. Expects c->mtx, c->linger and
// !c->lingering.
void aai_conn_linger_locked(aai_conn *c);

// aai_conn_fail records err as the reason (if none yet) and aborts I/O.
void aai_conn_fail(aai_conn *c, int err);

// aai_conn_rx delivers every complete frame of buf[0..len) and sets *used
// to the bytes consumed; returns 0 or AA_EMSGSIZE (a header claims too
// much: the caller fails the conn). Sets *need to the total bytes the next
// partial frame needs (0 if unknown). Called on the receive thread only.
int aai_conn_rx(aai_conn *c, const uint8_t *buf, size_t len, size_t *used,
                size_t *need);

// aai_conn_rx_end ends the receive path: delivers down (the recorded reason,
// else err) and returns true if the caller must now tear c down (deferred
// free). Called once, on the receive thread, after the last aai_conn_rx.
bool aai_conn_rx_end(aai_conn *c, int err);

uint64_t aai_tp_now_ms(void);

// The process's spinner slots (transport_inproc.c): at most online CPUs - 1
// idle transport threads spin at once, inproc ends and socket loops alike;
// take returns false when none is free. aai_inproc_spin_config sets the
// limit (tests).
bool aai_tp_spin_take(void);
void aai_tp_spin_release(void);

// Backends.
int aai_inproc_listen(aai_listener **lp, const char *name,
                      const aai_tp_opts *o, void (*accept)(void *, aai_conn *),
                      void *arg);
int aai_inproc_dial(aai_conn **cp, const char *name, const aai_tp_opts *o);
int aai_nng_listen(aai_listener **lp, const char *url, const aai_tp_opts *o,
                   void (*accept)(void *, aai_conn *), void *arg);
int aai_nng_dial(aai_conn **cp, const char *url, const aai_tp_opts *o);
int aai_sock_listen(aai_listener **lp, const char *url, const aai_tp_opts *o,
                    void (*accept)(void *, aai_conn *), void *arg);
int aai_sock_dial(aai_conn **cp, const char *url, const aai_tp_opts *o);

typedef struct aai_listener_ops {
	int (*port)(aai_listener *l);
	void (*close)(aai_listener *l);
	void (*free)(aai_listener *l);
} aai_listener_ops;

struct aai_listener {
	const aai_listener_ops *ops;
};

#endif // AA_TRANSPORT_IMPL_H
