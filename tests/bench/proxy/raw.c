// raw.c: the raw socket floor. A blocking stream socket (AF_UNIX for
// ipc://PATH, TCP with TCP_NODELAY for tcp://HOST:PORT) carrying frames
// with the same framing as aaproxy's transport: a 4-byte big-endian length,
// then the bytes. No library: what the kernel costs for the same exchange.
//
// Server (a process of its own, --server raw URL): one accept thread and
// one thread per connection; a connection thread reads a frame and writes
// it back, until EOF or a frame longer than BIG_MSG (then it closes the
// connection). Threads share nothing (each owns its fd and buffer). The
// main thread waits for SIGTERM, blocked in every thread, and exits.
//
// Client: raw_call is one blocking ping-pong (one writev, then reads).
// raw_bandwidth keeps `window` frames outstanding with two threads: the
// caller writes while a credit is free (a semaphore of `window`
// credits); a reader thread reads echoes and gives a credit back for
// each. A single thread could deadlock: with 1 MiB frames both sides'
// socket buffers fill while each waits in write. At the end the writer
// takes all `window` credits back, which means every echo has arrived,
// then shuts the socket down so that the reader's next read returns and
// it exits; if the reader fails it sets err and gives back every credit,
// so the writer never waits forever.
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "bench_proxy.h"

// raw_addr parses url into addr; false for a url it does not take.
static bool
raw_addr(const char *url, struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof(*ss));
	if (strncmp(url, "ipc://", 6) == 0) {
		struct sockaddr_un *un = (struct sockaddr_un *)ss;
		if (strlen(url + 6) >= sizeof(un->sun_path)) {
			return false;
		}
		un->sun_family = AF_UNIX;
		strcpy(un->sun_path, url + 6);
		*len = sizeof(*un);
		return true;
	}
	if (strncmp(url, "tcp://", 6) == 0) {
		struct sockaddr_in *in = (struct sockaddr_in *)ss;
		char host[64];
		int port;
		const char *colon = strrchr(url + 6, ':');
		size_t hl = colon != NULL ? (size_t)(colon - (url + 6)) : 0;
		if (colon == NULL || hl == 0 || hl >= sizeof(host) ||
		    sscanf(colon + 1, "%d", &port) != 1 || port < 0 ||
		    port > 65535) {
			return false;
		}
		memcpy(host, url + 6, hl);
		host[hl] = '\0';
		in->sin_family = AF_INET;
		in->sin_port = htons((uint16_t)port);
		if (inet_pton(AF_INET, host, &in->sin_addr) != 1) {
			return false;
		}
		*len = sizeof(*in);
		return true;
	}
	return false;
}

static int
read_full(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

// write_frame writes the 4-byte length and the bytes (one writev, more
// if the kernel takes less).
static int
write_frame(int fd, const uint8_t *data, size_t len)
{
	uint8_t hdr[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16),
	                  (uint8_t)(len >> 8), (uint8_t)len};
	struct iovec iov[2] = {{hdr, 4}, {(void *)data, len}};
	size_t left = 4 + len;
	int i = 0;
	while (left > 0) {
		ssize_t n = writev(fd, iov + i, 2 - i);
		if (n < 0 && errno == EINTR) {
			continue;
		}
		if (n <= 0) {
			return -1;
		}
		left -= (size_t)n;
		while (i < 2 && (size_t)n >= iov[i].iov_len) {
			n -= (ssize_t)iov[i].iov_len;
			iov[i].iov_len = 0;
			i++;
		}
		if (i < 2) {
			iov[i].iov_base = (uint8_t *)iov[i].iov_base + n;
			iov[i].iov_len -= (size_t)n;
		}
	}
	return 0;
}

// read_frame reads one frame of at most max bytes into buf: its length,
// or -1.
static long
read_frame(int fd, uint8_t *buf, size_t max)
{
	uint8_t hdr[4];
	if (read_full(fd, hdr, 4) != 0) {
		return -1;
	}
	size_t len = ((size_t)hdr[0] << 24) | ((size_t)hdr[1] << 16) |
	             ((size_t)hdr[2] << 8) | (size_t)hdr[3];
	if (len > max || read_full(fd, buf, len) != 0) {
		return -1;
	}
	return (long)len;
}

static void
set_nodelay(int fd, int family)
{
	int one = 1;
	if (family == AF_INET) {
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
}

// ---- Server ----

static void *
raw_conn_thread(void *arg)
{
	int fd = (int)(intptr_t)arg;
	uint8_t *buf = malloc(BIG_MSG);
	long n;
	while (buf != NULL && (n = read_frame(fd, buf, BIG_MSG)) >= 0) {
		if (write_frame(fd, buf, (size_t)n) != 0) {
			break;
		}
	}
	free(buf);
	close(fd);
	return NULL;
}

static void *
raw_accept_thread(void *arg)
{
	int lfd = (int)(intptr_t)arg;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	getsockname(lfd, (struct sockaddr *)&ss, &sl);
	for (;;) {
		int fd = accept(lfd, NULL, NULL);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED) {
				continue;
			}
			fprintf(stderr, "bench_proxy raw: accept: %s\n",
			        strerror(errno));
			return NULL;
		}
		set_nodelay(fd, ss.ss_family);
		pthread_t th;
		if (pthread_create(&th, NULL, raw_conn_thread,
		                   (void *)(intptr_t)fd) != 0) {
			close(fd);
			continue;
		}
		pthread_detach(th);
	}
}

int
raw_server_main(const char *url)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	if (!raw_addr(url, &ss, &sl)) {
		fprintf(stderr, "bench_proxy raw: bad url %s\n", url);
		return 2;
	}
	if (ss.ss_family == AF_UNIX) {
		unlink(((struct sockaddr_un *)&ss)->sun_path);
	}
	int one = 1;
	int lfd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0 ||
	    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) !=
	        0 ||
	    bind(lfd, (struct sockaddr *)&ss, sl) != 0 ||
	    listen(lfd, 1024) != 0) {
		fprintf(stderr, "bench_proxy raw: listen %s: %s\n", url,
		        strerror(errno));
		return 1;
	}
	int port = 0;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in in;
		socklen_t il = sizeof(in);
		getsockname(lfd, (struct sockaddr *)&in, &il);
		port = ntohs(in.sin_port);
	}
	sigset_t term; // blocked by server_main before this
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	pthread_t th;
	if (pthread_create(&th, NULL, raw_accept_thread,
	                   (void *)(intptr_t)lfd) != 0) {
		return 1;
	}
	printf("port %d\n", port);
	fflush(stdout);
	int sig = 0;
	sigwait(&term, &sig);
	exit(0); // no teardown: a benchmark's server just ends
}

// ---- Client ----

int
raw_dial(const char *url)
{
	struct sockaddr_storage ss;
	socklen_t sl;
	if (!raw_addr(url, &ss, &sl)) {
		die("raw socket: bad url", AA_EINVAL);
	}
	int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&ss, sl) != 0) {
		fprintf(stderr, "bench_proxy: raw connect %s: %s\n", url,
		        strerror(errno));
		exit(1);
	}
	set_nodelay(fd, ss.ss_family);
	return fd;
}

int
raw_call(int fd, const uint8_t *data, uint8_t *buf, size_t len)
{
	if (write_frame(fd, data, len) != 0 ||
	    read_frame(fd, buf, len) != (long)len) {
		return -1;
	}
	return 0;
}

typedef struct raw_bw {
	int fd;
	size_t size;
	int window;
	sem_t credits;
	atomic_int err;
} raw_bw;

static void *
raw_reader(void *arg)
{
	raw_bw *b = arg;
	uint8_t *buf = malloc(b->size);
	for (;;) {
		long n = buf != NULL ? read_frame(b->fd, buf, b->size) : -1;
		if (n < 0) {
			break; // the writer's shutdown, or a failure
		}
		if ((size_t)n != b->size) {
			atomic_store(&b->err, 1);
		}
		sem_post(&b->credits);
	}
	// Free the writer if it still waits for credits (a failure).
	for (int i = 0; i < b->window; i++) {
		sem_post(&b->credits);
	}
	free(buf);
	return NULL;
}

long
raw_bandwidth(int fd, size_t size, int window, double secs, long limit)
{
	raw_bw b = {.fd = fd, .size = size, .window = window};
	uint8_t *data = malloc(size);
	pthread_t th;
	if (data == NULL || sem_init(&b.credits, 0, (unsigned)window) != 0 ||
	    pthread_create(&th, NULL, raw_reader, &b) != 0) {
		die("raw bandwidth setup", AA_ENOMEM);
	}
	memset(data, 'x', size);
	uint64_t deadline = now_ns() + (uint64_t)(secs * 1e9);
	long sent = 0;
	while (limit > 0 ? sent < limit : now_ns() < deadline) {
		sem_wait(&b.credits);
		if (write_frame(fd, data, size) != 0) {
			atomic_store(&b.err, 1);
			break;
		}
		sent++;
	}
	for (int i = 0; i < window; i++) { // every echo has arrived
		sem_wait(&b.credits);
	}
	shutdown(fd, SHUT_RDWR);
	pthread_join(th, NULL);
	sem_destroy(&b.credits);
	free(data);
	check(atomic_load(&b.err) == 0, "raw bandwidth echo");
	return sent;
}
