// transport.h: the internal transport that the client and server layers use
// to exchange frames (each one encoded protobuf message) without touching
// nng. URLs: inproc://name (in-process, see transport_inproc.c), ipc://path
// and tcp://host:port (our own sockets and epoll, see transport_sock.c),
// tls+tcp://host:port (nng's stream API, see transport_nng.c); on the wire
// each frame has a 4-byte big-endian length prefix. ipc and tcp can also
// run on nng's streams (aai_tp_opts.nng_streams, or AA_TRANSPORT=nng in the
// environment, read once).
//
// Objects. An aai_listener accepts connections and hands each one to its
// accept callback; aai_dial makes one. An aai_conn belongs to whoever got it
// (the accept callback's owner or aai_dial's caller) until aai_conn_free.
//
// Threads. Frame, flush and down callbacks of one connection are serialised
// and run on its receive thread (the epoll loop thread that reads it, an
// nng task thread, or the inproc connection's own thread; inproc frame and
// flush callbacks may also run on the thread of the other end of the pipe,
// which delivers a batch to an end that sleeps: see transport_inproc.c;
// a test hook turns that off, inproc_hooks.h).
// They must be short and must not block, and must not wait for the other
// end of an inproc pipe. The accept callback runs on the listener's thread
// (inproc: the dialer's). No callback runs under a transport lock. Sends
// may come from any thread; a send usually writes inline on the calling
// thread (ipc, tcp) and never waits for the network: a write the socket
// cannot take at once finishes on the connection's loop thread (nng
// backend: its waiter thread). Sends made by callbacks during a received
// batch leave together in one write at the end of the batch.
//
// Lifecycle, as nng's: close is idempotent and never blocks; free closes,
// waits until no callback of the object runs, and frees. aai_conn_free
// called from inside one of that connection's own callbacks is deferred:
// it returns at once, the down callback still follows (if it has not
// run), and the connection is freed on its receive thread after it. After
// aai_conn_free no thread may use the connection; a close that is already
// running on another thread when the free happens is waited for.
#ifndef AA_TRANSPORT_H
#define AA_TRANSPORT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct aai_conn aai_conn;
typedef struct aai_listener aai_listener;

// A budget of bytes queued for sending, shared by several connections (a
// server's): a connection that has bytes queued stops reading while the
// total is over max (see send_pause). used and pauses are counters.
typedef struct aai_tp_budget {
	atomic_size_t used;
	size_t max;                  // 0: no budget
	atomic_uint_fast64_t pauses; // times a connection stopped reading
} aai_tp_budget;

// Options for aai_listen and aai_dial. Strings and the heartbeat frame are
// copied; the struct may be discarded after the call. Zero means default.
typedef struct aai_tp_opts {
	// A frame longer than this (sent or received) closes the connection
	// with AA_EMSGSIZE; a received one is refused from its header, before
	// anything is allocated for it. Default 4 MiB.
	size_t max_frame;
	// When nothing was sent for heartbeat_ms, send heartbeat_frame (an
	// encoded Heartbeat supplied by the layer above). 0 = off.
	int heartbeat_ms;
	const void *heartbeat_frame;
	size_t heartbeat_len;
	// Nothing received for silence_ms: the connection goes down with
	// AA_ETIMEDOUT. 0 = off.
	int silence_ms;
	// aai_dial gives up after this long (AA_ETIMEDOUT). Default 5000.
	int connect_timeout_ms;
	// Flow control, so that a peer that does not read costs bounded
	// memory (docs/protocol.md § 17). While more than
	// send_pause bytes wait to be written to the peer, the connection
	// stops reading (serving nothing more of that peer) until they drop
	// to half of it; meanwhile its silence bound is not applied (the
	// silence is ours). 0 never pauses: only the side that answers
	// (a server) may pause, or two peers that both stopped reading would
	// wait for each other. A send that would queue more than send_max
	// bytes fails the connection with AA_ELIMIT (see limit_frame for
	// its last word); default 64 MiB, raised to
	// at least send_pause + max_frame + 4. budget (may be NULL; ipc and
	// tcp only) adds a shared bound: a connection with bytes queued also
	// stops reading while the budget is over.
	//
	// limit_frame (copied; NULL: none): the last frame to say why a
	// connection past send_max is dropped (the layer's encoded
	// Goodbye{ELIMIT}). With it, the drop is a linger instead of an
	// abort, on the socket backend (ipc, tcp): the frames queued and not
	// started are discarded at once (their bytes leave the count and the
	// budget), reading stops, the frame being written is finished, then
	// limit_frame, then the write side is shut (the peer reads EOF); the
	// connection goes down with AA_ELIMIT when the peer closes, or
	// AAI_TP_LINGER_MS after the drop, whichever comes first. Sends are
	// refused from the drop on, with AA_ELIMIT until the close. Other
	// backends ignore it and drop at once (docs/protocol.md § 17).
	size_t send_pause;
	size_t send_max;
	aai_tp_budget *budget;
	const void *limit_frame;
	size_t limit_len;
	// tls+tcp:// only. Server: cert and key (PEM files) are required; a
	// CA and tls_verify_peer ask for client certificates. Client: the CA
	// that signed the server, checked when tls_verify_peer is set;
	// tls_server_name is the name expected in the server's certificate.
	const char *tls_cert_file;
	const char *tls_key_file;
	const char *tls_ca_file;
	const char *tls_server_name;
	bool tls_verify_peer;
	// ipc:// and tcp:// on nng's stream API instead of our own sockets
	// (AA_TRANSPORT=nng in the environment does the same for every
	// connection; AA_TRANSPORT=sock forces our own).
	bool nng_streams;
} aai_tp_opts;

// Callbacks of a connection; see "Threads" above.
typedef struct aai_conn_cbs {
	// frame: one received frame; data is valid only during the call.
	void (*frame)(void *arg, aai_conn *c, const uint8_t *data, size_t len);
	// flush (optional): after the frames of one received batch, so that
	// replies queued by them can be sent together.
	void (*flush)(void *arg, aai_conn *c);
	// oversize (optional): a frame header claimed more than max_frame;
	// the connection goes down with AA_EMSGSIZE right after. A frame sent
	// from here (a Goodbye) leaves, best effort, before it closes.
	void (*oversize)(void *arg, aai_conn *c, size_t len);
	// down: exactly once per started connection, after its last frame
	// callback. err: AA_ECLOSED (aai_conn_close), AA_ECONNLOST (peer gone
	// or closed), AA_ETIMEDOUT (silence), AA_EMSGSIZE, AA_ECRYPTO.
	void (*down)(void *arg, aai_conn *c, int err);
} aai_conn_cbs;

// aai_listen starts listening on url; accept(arg, c) receives each new
// connection, not yet started. Returns AA_EINVAL (bad URL), AA_EBUSY
// (address in use), AA_ENOTSUP, AA_ECRYPTO (TLS files) or AA_ESYSTEM.
int aai_listen(aai_listener **lp, const char *url, const aai_tp_opts *o,
               void (*accept)(void *arg, aai_conn *c), void *arg);

// aai_listener_port returns the TCP port a tcp:// or tls+tcp:// listener is
// bound to (useful with port 0), or 0.
int aai_listener_port(aai_listener *l);

// aai_listener_close stops accepting; established connections stay up.
// Idempotent, never blocks.
void aai_listener_close(aai_listener *l);

// aai_listener_free closes l, waits until its accept callback is not
// running and frees it. Must not be called from that accept callback.
void aai_listener_free(aai_listener *l);

// aai_dial connects to url, blocking up to connect_timeout_ms. Returns
// AA_ECONNREF, AA_ETIMEDOUT, AA_EINVAL, AA_ENOTSUP or AA_ECRYPTO.
int aai_dial(aai_conn **cp, const char *url, const aai_tp_opts *o);

// aai_conn_start sets c's callbacks and starts receiving (once per conn).
// A connection that went down before it started reports down from here on.
void aai_conn_start(aai_conn *c, const aai_conn_cbs *cbs, void *arg);

// aai_conn_send copies one frame into c's pending send buffer, which goes
// out with every other frame queued meanwhile in one write. Never blocks on
// the network. Returns AA_ECLOSED once c is closing or down, AA_ELIMIT
// while it lingers after a drop past send_max, AA_EMSGSIZE
// for a frame longer than max_frame, AA_ENOMEM.
int aai_conn_send(aai_conn *c, const void *frame, size_t len);

// aai_conn_send_encode is aai_conn_send for a frame of len bytes that
// encode(ctx, dst) writes straight into the send buffer. encode runs under
// c's lock: it must only write its len bytes and call nothing else.
int aai_conn_send_encode(aai_conn *c, size_t len,
                         void (*encode)(void *ctx, uint8_t *dst), void *ctx);

// aai_conn_close aborts c's I/O; unsent frames are discarded. Idempotent,
// never blocks; if c is started and not down yet, down(AA_ECLOSED) follows.
void aai_conn_close(aai_conn *c);

// aai_conn_end_batch, from a frame callback of c: no further frame of the
// batch being delivered is, what the callbacks queued (a Goodbye) is
// written, best effort, as after an oversized frame, and then c goes down
// with err. Closing from the callback instead would discard that Goodbye
// (the batch is corked until it ends). Anywhere else it is
// aai_conn_fail(c, err).
void aai_conn_end_batch(aai_conn *c, int err);

// aai_conn_free closes c, waits until none of its callbacks runs and frees
// it. From inside one of c's callbacks the free is deferred (see above).
// Returns 0.
int aai_conn_free(aai_conn *c);

// aai_conn_on_rx_thread says whether this thread is in c's receive path:
// running one of c's callbacks, or (inproc) delivering the other end's
// batch on c's thread. A layer's stop called there would wait for the
// thread it runs on (AA_EDEADLK).
bool aai_conn_on_rx_thread(aai_conn *c);

// aai_conn_id returns c's id, unique within the process.
uint64_t aai_conn_id(aai_conn *c);

// aai_conn_set_heartbeat changes c's heartbeat interval and silence bound
// (0 = off) once the handshake has agreed on them. A period that was off
// for both when c was made stays off, and heartbeats stay off if they were.
void aai_conn_set_heartbeat(aai_conn *c, int heartbeat_ms, int silence_ms);

// aai_conn_send_raw is a test hook for fuzzing: it appends data to what
// the peer of an inproc:// connection receives, as a raw byte stream that
// the peer's framing then parses (AA_ENOTSUP on other transports).
int aai_conn_send_raw(aai_conn *c, const void *data, size_t len);

// aai_sock_rx_cap is a test hook: the size of the receive buffer of an
// ipc:// or tcp:// connection of the socket backend, or 0 for any other.
size_t aai_sock_rx_cap(aai_conn *c);

// aai_sock_spins is a test hook: how many times the socket backend's idle
// loops spun (process-wide), and how many of those spins found an event.
void aai_sock_spins(uint64_t *spins, uint64_t *hits);

// aai_tp_set_linger_ms is a test hook: the linger of connections dropped
// past send_max from now on (transport.h, limit_frame), process-wide;
// 0 restores the default (AAI_TP_LINGER_MS, 1 s).
void aai_tp_set_linger_ms(int ms);

// aai_conn_suppress_heartbeats is a test hook: while on, c sends no
// heartbeats, so that its peer's silence detection can be tested.
void aai_conn_suppress_heartbeats(aai_conn *c, bool on);

// Counters of the inproc transport, process-wide (transport_inproc.c).
typedef struct aai_inproc_stat {
	int spinners;          // owner threads spinning now
	uint64_t spins;        // spins started
	uint64_t spin_hits;    // ... that saw a frame or a close arrive
	uint64_t spin_refused; // spins wanted but no spinner slot was free
	uint64_t handovers;    // batches delivered by the peer end's thread
	uint64_t sleeps;       // waits on a condition variable
} aai_inproc_stat;

// aai_inproc_stats fills st with the inproc counters.
void aai_inproc_stats(aai_inproc_stat *st);

// aai_inproc_spin_config is a test hook: at most max_spinners idle inproc
// threads and socket loops spin at once (-1: online CPUs - 1, the default),
// each for spin_ns
// (-1: the adaptive budget, the default). Call it while no inproc
// connection is idle.
void aai_inproc_spin_config(int max_spinners, int spin_ns);

#endif // AA_TRANSPORT_H
