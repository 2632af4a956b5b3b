// transport_sock_dial.c: the socket backend's addresses (ipc:// paths,
// tcp:// host:port) and socket options, and dial: a connected socket
// handed to a loop of its own (transport_sock.c).
//
// Design notes.
//
// * Dial blocks the caller only: TCP connects non-blocking and polls up to
//   connect_timeout_ms; AF_UNIX connects with SO_SNDTIMEO set to it (a
//   full backlog makes the connect wait, then fail with EAGAIN).
// * No lock and no thread of its own: dial runs on the caller's thread
//   and the connection's life is transport_sock.c's once it is made.
#define _GNU_SOURCE // SOCK_NONBLOCK

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "transport_sock.h"

#define IPC_SNDBUF (1 << 20)

// aai_sock_parse_ipc fills a for ipc://path (the path as nng took it: the rest
// of the URL, relative or absolute).
int
aai_sock_parse_ipc(saddr *a, const char *path)
{
	struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof(un->sun_path)) {
		return AA_EINVAL;
	}
	memset(a, 0, sizeof(*a));
	un->sun_family = AF_UNIX;
	memcpy(un->sun_path, path, n + 1);
	a->len = (socklen_t)sizeof(*un);
	a->family = AF_UNIX;
	a->tcp = false;
	return 0;
}

// aai_sock_resolve_tcp resolves tcp://host:port (host may be a name, an IPv4
// address, [IPv6], empty or * for any) into *res (freeaddrinfo).
int
aai_sock_resolve_tcp(struct addrinfo **res, const char *hp, bool passive)
{
	char host[256];
	const char *colon;
	const char *h = hp;
	size_t hlen;
	if (hp[0] == '[') {
		const char *end = strchr(hp, ']');
		if (end == NULL || end[1] != ':') {
			return AA_EINVAL;
		}
		h = hp + 1;
		hlen = (size_t)(end - h);
		colon = end + 1;
	} else {
		colon = strrchr(hp, ':');
		if (colon == NULL) {
			return AA_EINVAL;
		}
		hlen = (size_t)(colon - hp);
	}
	if (hlen >= sizeof(host)) {
		return AA_EINVAL;
	}
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	const char *port = colon + 1;
	char *endp;
	if (*port == '\0') {
		return AA_EINVAL;
	}
	long pn = strtol(port, &endp, 10);
	if (*endp != '\0' || pn < 0 || pn > 65535) {
		return AA_EINVAL;
	}
	struct addrinfo hints;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	bool any = hlen == 0 || strcmp(host, "*") == 0;
	if (any) {
		hints.ai_family = AF_INET;
		hints.ai_flags |= AI_PASSIVE;
	} else {
		hints.ai_family = AF_UNSPEC;
		if (passive) {
			hints.ai_flags |= AI_PASSIVE;
		}
	}
	if (getaddrinfo(any ? NULL : host, port, &hints, res) != 0) {
		return AA_EINVAL;
	}
	return 0;
}

int
aai_sock_map_errno(int e)
{
	switch (e) {
	case ECONNREFUSED:
	case ENOENT:
		return AA_ECONNREF;
	case ETIMEDOUT:
	case EAGAIN:
	case EINPROGRESS:
		return AA_ETIMEDOUT;
	case EADDRINUSE:
		return AA_EBUSY;
	case EADDRNOTAVAIL:
	case EAFNOSUPPORT:
	case EINVAL:
	case ENAMETOOLONG:
	case ENOTDIR:
		return AA_EINVAL;
	case ENOMEM:
	case ENOBUFS:
		return AA_ENOMEM;
	default:
		return AA_ESYSTEM;
	}
}

// aai_sock_set_ipc_sndbuf: an AF_UNIX stream's in-flight bytes are bounded by
// the sender's SO_SNDBUF (208 KiB by default); 1 MiB (the kernel doubles it)
// lets a 1 MiB frame go in one or two writes instead of five wake-ups of
// each side. It costs kernel memory only while bytes are in flight.
// Measured: echo of 1 MiB payloads went from 29-57 % to 75-117 % of a raw
// socket's rate (docs/PERFORMANCE.md, "Socket backend"). TCP keeps the
// kernel's autotuning, which measured as well as a fixed 1 MiB.
void
aai_sock_set_ipc_sndbuf(int fd)
{
	int n = IPC_SNDBUF;
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &n, sizeof(n));
}

void
aai_sock_set_nodelay(int fd)
{
	int one = 1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

// ---- dial ----

// connect_unix connects fd (blocking) with SO_SNDTIMEO as the bound: a
// full backlog makes connect wait, then fail with EAGAIN.
static int
connect_unix(int fd, const saddr *a, int timeout_ms)
{
	struct timeval tv = {.tv_sec = timeout_ms / 1000,
	                     .tv_usec = (timeout_ms % 1000) * 1000};
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	int rv;
	do {
		rv = connect(fd, (const struct sockaddr *)&a->ss, a->len);
	} while (rv != 0 && errno == EINTR);
	if (rv != 0) {
		return aai_sock_map_errno(errno);
	}
	struct timeval zero = {0, 0};
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &zero, sizeof(zero));
	return 0;
}

// connect_tcp connects the non-blocking fd within timeout_ms.
static int
connect_tcp(int fd, const struct sockaddr *sa, socklen_t len, int timeout_ms)
{
	if (connect(fd, sa, len) == 0) {
		return 0;
	}
	if (errno != EINPROGRESS && errno != EINTR) {
		return aai_sock_map_errno(errno);
	}
	struct pollfd pfd = {.fd = fd, .events = POLLOUT};
	int rv;
	do {
		rv = poll(&pfd, 1, timeout_ms);
	} while (rv < 0 && errno == EINTR);
	if (rv == 0) {
		return AA_ETIMEDOUT;
	}
	int err = 0;
	socklen_t elen = sizeof(err);
	if (rv < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0) {
		return AA_ESYSTEM;
	}
	return err == 0 ? 0 : aai_sock_map_errno(err);
}

static int
dial_fd(int *fdp, const char *url, int timeout_ms)
{
	if (strncmp(url, "ipc://", 6) == 0) {
		saddr a;
		int rv = aai_sock_parse_ipc(&a, url + 6);
		if (rv != 0) {
			return rv;
		}
		int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			return aai_sock_map_errno(errno);
		}
		aai_sock_set_ipc_sndbuf(fd);
		if ((rv = connect_unix(fd, &a, timeout_ms)) != 0 ||
		    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0) {
			close(fd);
			return rv != 0 ? rv : AA_ESYSTEM;
		}
		*fdp = fd;
		return 0;
	}
	struct addrinfo *res;
	int rv = aai_sock_resolve_tcp(&res, url + 6, false);
	if (rv != 0) {
		return rv;
	}
	rv = AA_ECONNREF;
	for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
		int fd = socket(ai->ai_family,
		                SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0) {
			rv = aai_sock_map_errno(errno);
			continue;
		}
		rv = connect_tcp(fd, ai->ai_addr, ai->ai_addrlen, timeout_ms);
		if (rv == 0) {
			aai_sock_set_nodelay(fd);
			*fdp = fd;
			break;
		}
		close(fd);
		if (rv == AA_ETIMEDOUT) {
			break; // the time is spent
		}
	}
	freeaddrinfo(res);
	return rv;
}

int
aai_sock_dial(aai_conn **cp, const char *url, const aai_tp_opts *o)
{
	int fd = -1;
	int rv = dial_fd(&fd, url, o->connect_timeout_ms);
	if (rv != 0) {
		return rv;
	}
	sloop *lp;
	if ((rv = aai_sock_loop_alloc(&lp)) != 0) {
		close(fd);
		return rv;
	}
	if ((rv = aai_sock_conn_alloc(cp, fd, lp, o)) != 0) {
		aai_sock_loop_destroy(lp);
		return rv;
	}
	if ((rv = aai_sock_loop_run(lp)) != 0) {
		// No thread: undo by hand (the conn holds lp).
		sconn *sc = (sconn *)*cp;
		close(sc->fd);
		aai_tbuf_fini(&sc->rbuf);
		aai_conn_base_fini(&sc->base);
		aai_free(sc);
		aai_live_dec(AA_LIVE_OTHER);
		aai_sock_loop_destroy(lp);
		return rv;
	}
	return 0;
}
