// transport_sock.h: what the socket backend's files share
// (transport_sock.c, transport_sock_spin.c, transport_sock_dial.c,
// transport_sock_listen.c): the loop and connection objects and their
// internal functions. Not used outside the socket backend.
#ifndef AA_TRANSPORT_SOCK_H
#define AA_TRANSPORT_SOCK_H

#include <netdb.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "transport_impl.h"

#define RBUF_INITIAL    (4u * 1024)
#define RBUF_KEEP       (64u * 1024) // a receive buffer up to this size stays
#define RBUF_IDLE_MS    200          // a larger one goes after this long idle
#define LOOP_EVENTS     64
#define ACCEPT_RETRY_MS 100 // accept paused this long when out of fds

typedef struct sloop sloop;
typedef struct sconn sconn;

typedef struct sconn {
	aai_conn base;
	int fd;
	sloop *loop;
	// Loop thread only: the receive buffer and the big-buffer list.
	aai_tbuf rbuf;
	atomic_size_t rx_cap; // rbuf.cap, for the test hook
	sconn *big_next;
	sconn *big_prev;
	bool in_big;
	uint64_t last_big_ms;
	// base.mtx: send buffers, the token, cork, flow control, epoll mask.
	aai_tbuf pend;
	aai_tbuf fly; // the write in flight; owned by the sending token
	size_t fly_off;
	bool sending;  // a thread (or the loop: tx_loop) holds the token
	bool writing;  // the token holder is inside tx_run (fly in use)
	bool trim_fly; // the drop waits for the writer to trim fly
	bool tx_loop;  // the loop finishes the write when writable
	bool corked;
	size_t queued;
	bool rx_paused;
	bool budget_gone; // the shared budget no longer counts queued
	bool registered;  // in the loop's epoll set
	uint32_t mask;    // events asked for while registered
} sconn;

struct sloop {
	aai_listener base; // used when the loop belongs to a listener
	int epfd;
	int wakefd;
	pthread_t thread;
	pthread_mutex_t mtx; // refs, quit, self_free, listener fields
	pthread_cond_t cv;   // accepting went false
	int refs;
	atomic_bool quit;
	bool self_free; // the loop thread frees the loop on its way out
	// Loop thread only.
	sconn *big;
	int nbig;
	uint64_t last_sweep_ms;
	bool accept_paused; // out of fds: EPOLLIN off on lfd for a while
	uint64_t accept_paused_ms;
	uint16_t short_gaps; // the last 16 idle gaps: bit set if short
	unsigned sleeps;     // counts sleeps between probes
	// Listener (mtx): the accepting socket, closed once.
	bool is_listener;
	int lfd;
	bool lclosed;
	bool accepting;
	bool tcp;
	char *unlink_path; // ipc: the socket file, removed at close
	aai_tp_opts opts;  // for accepted conns; heartbeat frame copied
	uint8_t *hb_frame;
	void (*accept)(void *, aai_conn *);
	void *arg;
};

// ---- transport_sock.c: loops and connections ----

// aai_sock_loop_alloc makes a loop (epoll set and eventfd), not running.
AAI_HIDDEN int aai_sock_loop_alloc(sloop **lpp);
// aai_sock_loop_run starts the loop's thread.
AAI_HIDDEN int aai_sock_loop_run(sloop *lp);
// aai_sock_loop_destroy frees a loop whose thread is not running.
AAI_HIDDEN void aai_sock_loop_destroy(sloop *lp);
// aai_sock_loop_unref drops a reference; the last one ends the loop.
AAI_HIDDEN void aai_sock_loop_unref(sloop *lp);
// aai_sock_conn_alloc wraps the connected non-blocking fd on loop lp
// (taking a reference to lp); on error fd is closed.
AAI_HIDDEN int aai_sock_conn_alloc(aai_conn **cp, int fd, sloop *lp,
                                   const aai_tp_opts *o);

// ---- transport_sock_dial.c: addresses ----

typedef struct saddr {
	struct sockaddr_storage ss;
	socklen_t len;
	int family;
	bool tcp;
} saddr;

// aai_sock_parse_ipc fills a for ipc://path.
AAI_HIDDEN int aai_sock_parse_ipc(saddr *a, const char *path);
// aai_sock_resolve_tcp resolves tcp://host:port into *res (freeaddrinfo).
AAI_HIDDEN int aai_sock_resolve_tcp(struct addrinfo **res, const char *hp,
                                    bool passive);
// aai_sock_map_errno maps a socket call's errno to an AA_E* code.
AAI_HIDDEN int aai_sock_map_errno(int e);
// aai_sock_set_ipc_sndbuf and aai_sock_set_nodelay set a new socket's
// options.
AAI_HIDDEN void aai_sock_set_ipc_sndbuf(int fd);
AAI_HIDDEN void aai_sock_set_nodelay(int fd);

// ---- transport_sock_spin.c ----

// aai_sock_loop_wait waits for events as epoll_wait(timeout) does,
// spinning first where it pays. Loop thread only.
AAI_HIDDEN int aai_sock_loop_wait(sloop *lp, struct epoll_event *evs,
                                  int timeout);

// ---- transport_sock_listen.c: the loop thread's listener part ----

// aai_sock_listener_accept accepts every pending connection (loop thread).
AAI_HIDDEN void aai_sock_listener_accept(sloop *lp);
// aai_sock_accept_resume puts EPOLLIN back on the listening socket after
// a pause for want of fds (loop thread).
AAI_HIDDEN void aai_sock_accept_resume(sloop *lp);

#endif // AA_TRANSPORT_SOCK_H
