// transport_sock_listen.c: the socket backend's listener: a listening
// socket on a loop of its own (transport_sock.c), which accepts every
// connection and serves it on the same thread.
//
// Design notes.
//
// * The listener is its loop (the sloop struct is also the aai_listener:
//   transport_sock.c's notes, "Loops"); its fields are under the loop's
//   mutex.
// * Races and who wins. Listener close vs accept: `accepting` under the
//   loop's mutex; a close during an accept leaves closing the fd to the
//   loop thread when the accept batch ends; free waits for it.
// * Out of fds at accept (EMFILE, ENFILE; also ENOBUFS, ENOMEM): the
//   pending connection keeps the listening socket readable, so the loop
//   takes EPOLLIN off it for ACCEPT_RETRY_MS (checkpoint
//   transport.accept_paused) and then tries again, instead of spinning.
#define _GNU_SOURCE // accept4, SOCK_NONBLOCK

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "transport_sock.h"

#define LISTEN_BACKLOG 128

// ---- listener ----

// lclose_locked closes the accepting socket once. Expects lp->mtx and
// that the loop thread is not accepting.
static void
lclose_locked(sloop *lp)
{
	if (lp->lfd < 0) {
		return;
	}
	(void)epoll_ctl(lp->epfd, EPOLL_CTL_DEL, lp->lfd, NULL);
	close(lp->lfd);
	lp->lfd = -1;
	if (lp->unlink_path != NULL) {
		(void)unlink(lp->unlink_path);
	}
}

// accept_pause stops accepting for ACCEPT_RETRY_MS when out of fds (or
// memory): the pending connection would keep the level-triggered socket
// readable and the loop would spin. Loop thread.
static void
accept_pause(sloop *lp)
{
	aai_mtx_lock(&lp->mtx);
	if (!lp->lclosed && lp->lfd >= 0) {
		struct epoll_event ev = {.events = 0, .data.ptr = lp};
		(void)epoll_ctl(lp->epfd, EPOLL_CTL_MOD, lp->lfd, &ev);
	}
	aai_mtx_unlock(&lp->mtx);
	lp->accept_paused = true;
	lp->accept_paused_ms = aai_tp_now_ms();
	AAI_CHECKPOINT("transport.accept_paused", lp);
}

// aai_sock_accept_resume puts EPOLLIN back on the listening socket. Loop
// thread.
void
aai_sock_accept_resume(sloop *lp)
{
	aai_mtx_lock(&lp->mtx);
	if (!lp->lclosed && lp->lfd >= 0) {
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = lp};
		(void)epoll_ctl(lp->epfd, EPOLL_CTL_MOD, lp->lfd, &ev);
	}
	aai_mtx_unlock(&lp->mtx);
	lp->accept_paused = false;
}

// aai_sock_listener_accept runs on the loop thread: accept every pending
// connection and hand each to the accept callback, with no lock held.
void
aai_sock_listener_accept(sloop *lp)
{
	aai_mtx_lock(&lp->mtx);
	if (lp->lclosed || lp->lfd < 0) {
		aai_mtx_unlock(&lp->mtx);
		return;
	}
	lp->accepting = true;
	int lfd = lp->lfd;
	aai_mtx_unlock(&lp->mtx);
	for (int i = 0; i < LOOP_EVENTS; i++) {
		int fd =
		    accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED) {
				continue;
			}
			if (errno == EMFILE || errno == ENFILE ||
			    errno == ENOBUFS || errno == ENOMEM) {
				accept_pause(lp);
			}
			break; // EAGAIN: level triggering brings the next
		}
		if (lp->tcp) {
			aai_sock_set_nodelay(fd);
		} else {
			aai_sock_set_ipc_sndbuf(fd);
		}
		aai_conn *c;
		if (aai_sock_conn_alloc(&c, fd, lp, &lp->opts) == 0) {
			lp->accept(lp->arg, c);
		}
		aai_mtx_lock(&lp->mtx);
		bool closed = lp->lclosed;
		aai_mtx_unlock(&lp->mtx);
		if (closed) {
			break;
		}
	}
	aai_mtx_lock(&lp->mtx);
	lp->accepting = false;
	if (lp->lclosed) {
		lclose_locked(lp);
	}
	aai_cv_broadcast(&lp->cv);
	aai_mtx_unlock(&lp->mtx);
}

static int
slistener_port(aai_listener *l)
{
	sloop *lp = (sloop *)l;
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	int port = 0;
	aai_mtx_lock(&lp->mtx);
	if (lp->tcp && lp->lfd >= 0 &&
	    getsockname(lp->lfd, (struct sockaddr *)&ss, &len) == 0) {
		if (ss.ss_family == AF_INET) {
			port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		} else if (ss.ss_family == AF_INET6) {
			port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
		}
	}
	aai_mtx_unlock(&lp->mtx);
	return port;
}

static void
slistener_close(aai_listener *l)
{
	sloop *lp = (sloop *)l;
	aai_mtx_lock(&lp->mtx);
	lp->lclosed = true;
	if (!lp->accepting) {
		lclose_locked(lp);
	} // else the loop thread closes it when its accept batch ends
	aai_mtx_unlock(&lp->mtx);
}

static void
slistener_free(aai_listener *l)
{
	sloop *lp = (sloop *)l;
	slistener_close(l);
	aai_mtx_lock(&lp->mtx);
	while (lp->accepting) {
		aai_cv_wait(&lp->cv, &lp->mtx);
	}
	aai_mtx_unlock(&lp->mtx);
	aai_live_dec(AA_LIVE_OTHER);
	aai_sock_loop_unref(lp); // the loop lives on while accepted conns do
}

static const aai_listener_ops slistener_ops = {
    .port = slistener_port,
    .close = slistener_close,
    .free = slistener_free,
};

// listen_unix binds path; a stale socket file that nobody listens on is
// replaced (as nng does), a live one is AA_EBUSY.
static int
listen_unix(int *fdp, const saddr *a)
{
	int fd =
	    socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		return aai_sock_map_errno(errno);
	}
	const struct sockaddr *sa = (const struct sockaddr *)&a->ss;
	if (bind(fd, sa, a->len) != 0) {
		int e = errno;
		if (e != EADDRINUSE) {
			close(fd);
			return e == ENOENT ? AA_EINVAL : aai_sock_map_errno(e);
		}
		// Someone there? Probe with a connect (non-blocking: a live
		// listener with a full backlog answers EAGAIN, not a wait).
		int probe = socket(
		    AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		int live = probe >= 0 && connect(probe, sa, a->len) == 0;
		int pe = errno;
		if (probe >= 0) {
			close(probe);
		}
		if (live || pe != ECONNREFUSED) {
			close(fd);
			return AA_EBUSY;
		}
		const struct sockaddr_un *un = (const struct sockaddr_un *)sa;
		(void)unlink(un->sun_path);
		if (bind(fd, sa, a->len) != 0) {
			e = errno;
			close(fd);
			return aai_sock_map_errno(e);
		}
	}
	if (listen(fd, LISTEN_BACKLOG) != 0) {
		int e = errno;
		close(fd);
		return aai_sock_map_errno(e);
	}
	*fdp = fd;
	return 0;
}

static int
listen_tcp(int *fdp, const char *hostport)
{
	struct addrinfo *res;
	int rv = aai_sock_resolve_tcp(&res, hostport, true);
	if (rv != 0) {
		return rv;
	}
	struct addrinfo *ai = res;
	int fd = socket(ai->ai_family,
	                SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rv = aai_sock_map_errno(errno);
		freeaddrinfo(res);
		return rv;
	}
	int one = 1;
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 ||
	    listen(fd, LISTEN_BACKLOG) != 0) {
		rv = aai_sock_map_errno(errno);
		close(fd);
		freeaddrinfo(res);
		return rv;
	}
	freeaddrinfo(res);
	aai_sock_set_nodelay(fd); // inherited by accepted sockets
	*fdp = fd;
	return 0;
}

int
aai_sock_listen(aai_listener **lp_out, const char *url, const aai_tp_opts *o,
                void (*accept)(void *, aai_conn *), void *arg)
{
	int fd = -1;
	int rv;
	bool tcp = strncmp(url, "tcp://", 6) == 0;
	char *path = NULL;
	if (tcp) {
		rv = listen_tcp(&fd, url + 6);
	} else {
		saddr a;
		if ((rv = aai_sock_parse_ipc(&a, url + 6)) == 0) {
			rv = listen_unix(&fd, &a);
		}
		if (rv == 0 && (path = aai_strdup(url + 6)) == NULL) {
			close(fd);
			(void)unlink(url + 6);
			rv = AA_ENOMEM;
		}
	}
	if (rv != 0) {
		return rv;
	}
	sloop *lp;
	if ((rv = aai_sock_loop_alloc(&lp)) != 0) {
		goto fail;
	}
	lp->base.ops = &slistener_ops;
	lp->refs = 1; // the listener's
	lp->is_listener = true;
	lp->tcp = tcp;
	lp->lfd = fd;
	lp->unlink_path = path;
	lp->accept = accept;
	lp->arg = arg;
	lp->opts = *o;
	lp->opts.tls_cert_file = lp->opts.tls_key_file = NULL;
	lp->opts.tls_ca_file = lp->opts.tls_server_name = NULL;
	if (o->heartbeat_len > 0) {
		if ((lp->hb_frame = aai_alloc(o->heartbeat_len)) == NULL) {
			lp->unlink_path = NULL;
			aai_sock_loop_destroy(lp);
			rv = AA_ENOMEM;
			goto fail;
		}
		memcpy(lp->hb_frame, o->heartbeat_frame, o->heartbeat_len);
		lp->opts.heartbeat_frame = lp->hb_frame;
	}
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = lp};
	if (epoll_ctl(lp->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
		lp->unlink_path = NULL;
		aai_sock_loop_destroy(lp);
		rv = AA_ESYSTEM;
		goto fail;
	}
	if ((rv = aai_sock_loop_run(lp)) != 0) {
		lp->unlink_path = NULL;
		aai_sock_loop_destroy(lp);
		goto fail;
	}
	aai_live_inc(AA_LIVE_OTHER);
	*lp_out = &lp->base;
	return 0;
fail:
	close(fd);
	if (path != NULL) {
		(void)unlink(path);
		aai_free(path);
	}
	return rv;
}
