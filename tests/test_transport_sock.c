// aa-test-labels: concurrent
// test_transport_sock.c: the socket backend of ipc:// and tcp://
// (common/src/transport_sock*.c) on its own mechanisms: it is the default,
// writes the socket cannot take are finished by the loop thread, the
// receive buffer grows to a large frame and shrinks back, many
// connections share one listener's loop, a peer that resets, dial errors
// and timeouts, URL forms, no SIGPIPE, pause and resume, the drop past
// send_max with a last frame and its linger. (fork with an ipc
// connection is test_client_fork's; fork is not for ThreadSanitizer.)
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "../common/src/transport.h"
#include "testutil.h"

TestSuite(transport_sock, .timeout = 60, .fini = aa_test_check_live);

// ---- helpers ----

static const char *
ipc_url(void)
{
	static char url[128];
	static int n;
	snprintf(url, sizeof(url), "ipc:///tmp/aa-tps-%d-%d.sock",
	         (int)getpid(), n++);
	return url;
}

// A connection's side: counts frames, records down.
typedef struct side {
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	size_t frames;
	size_t bytes;
	size_t max_cap; // largest receive buffer seen in a frame callback
	int downs;
	int err;
	bool echo;
	aai_conn *conn;
} side;

static void
side_init(side *s, bool echo)
{
	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&s->mtx, NULL);
	pthread_cond_init(&s->cv, NULL);
	s->echo = echo;
}

static void
side_fini(side *s)
{
	pthread_mutex_destroy(&s->mtx);
	pthread_cond_destroy(&s->cv);
}

static void
side_frame(void *arg, aai_conn *c, const uint8_t *data, size_t len)
{
	side *s = arg;
	size_t cap = aai_sock_rx_cap(c);
	if (s->echo) {
		(void)aai_conn_send(c, data, len);
	}
	pthread_mutex_lock(&s->mtx);
	s->frames++;
	s->bytes += len;
	if (cap > s->max_cap) {
		s->max_cap = cap;
	}
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mtx);
}

static void
side_down(void *arg, aai_conn *c, int err)
{
	(void)c;
	side *s = arg;
	pthread_mutex_lock(&s->mtx);
	s->downs++;
	s->err = err;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mtx);
}

static const aai_conn_cbs side_cbs = {.frame = side_frame, .down = side_down};

static void
side_wait_frames(side *s, size_t n)
{
	pthread_mutex_lock(&s->mtx);
	while (s->frames < n && s->downs == 0) {
		pthread_cond_wait(&s->cv, &s->mtx);
	}
	pthread_mutex_unlock(&s->mtx);
}

static int
side_wait_down(side *s)
{
	pthread_mutex_lock(&s->mtx);
	while (s->downs == 0) {
		pthread_cond_wait(&s->cv, &s->mtx);
	}
	int err = s->err;
	pthread_mutex_unlock(&s->mtx);
	return err;
}

// An echo server with up to MAX_SIDES accepted connections.
#define MAX_SIDES 256

typedef struct server {
	aai_listener *l;
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	side sides[MAX_SIDES];
	int n;
	char url[128];
} server;

static void
srv_accept(void *arg, aai_conn *c)
{
	server *s = arg;
	pthread_mutex_lock(&s->mtx);
	cr_assert_lt(s->n, MAX_SIDES);
	side *sd = &s->sides[s->n++];
	sd->conn = c;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mtx);
	aai_conn_start(c, &side_cbs, sd);
}

static void
srv_start(server *s, const char *url, const aai_tp_opts *o)
{
	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&s->mtx, NULL);
	pthread_cond_init(&s->cv, NULL);
	for (int i = 0; i < MAX_SIDES; i++) {
		side_init(&s->sides[i], true);
	}
	int rv = aai_listen(&s->l, url, o, srv_accept, s);
	cr_assert_eq(rv, 0, "listen %s: %s", url, aa_strerror(rv));
	int port = aai_listener_port(s->l);
	if (port > 0) {
		const char *colon = strrchr(url, ':');
		snprintf(s->url, sizeof(s->url), "%.*s:%d", (int)(colon - url),
		         url, port);
	} else {
		snprintf(s->url, sizeof(s->url), "%s", url);
	}
}

static side *
srv_wait_side(server *s, int i)
{
	pthread_mutex_lock(&s->mtx);
	while (s->n <= i) {
		pthread_cond_wait(&s->cv, &s->mtx);
	}
	pthread_mutex_unlock(&s->mtx);
	return &s->sides[i];
}

static void
srv_stop(server *s)
{
	aai_listener_free(s->l);
	for (int i = 0; i < s->n; i++) {
		aai_conn_free(s->sides[i].conn);
	}
	for (int i = 0; i < MAX_SIDES; i++) {
		side_fini(&s->sides[i]);
	}
	pthread_mutex_destroy(&s->mtx);
	pthread_cond_destroy(&s->cv);
}

// A plain listening Unix socket for a raw peer.
static int
raw_unix_listen(const char *url, int backlog)
{
	int lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	cr_assert_geq(lfd, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	memcpy(sa.sun_path, url + 6, strlen(url + 6) + 1);
	unlink(sa.sun_path);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(lfd, backlog), 0);
	return lfd;
}

// A plain listening TCP socket on 127.0.0.1; *port is its port.
static int
raw_tcp_listen(int *port)
{
	int lfd = socket(AF_INET, SOCK_STREAM, 0);
	cr_assert_geq(lfd, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET,
	                         .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	cr_assert_eq(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	cr_assert_eq(listen(lfd, 4), 0);
	socklen_t len = sizeof(sa);
	cr_assert_eq(getsockname(lfd, (struct sockaddr *)&sa, &len), 0);
	*port = ntohs(sa.sin_port);
	return lfd;
}

static void
read_full(int fd, uint8_t *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = read(fd, buf + got, len - got);
		cr_assert_gt(n, 0, "read: %zd", n);
		got += (size_t)n;
	}
}

static void
nap_ms(int ms)
{
	struct timespec ts = {.tv_sec = 0, .tv_nsec = ms * 1000000L};
	nanosleep(&ts, NULL);
}

// ---- the default backend ----

Test(transport_sock, default_for_ipc_and_tcp)
{
	server s;
	srv_start(&s, ipc_url(), NULL);
	aai_conn *c;
	cr_assert_eq(aai_dial(&c, s.url, NULL), 0);
	cr_assert_eq(aai_sock_rx_cap(c), 4096,
	             "ipc is not on the socket "
	             "backend (AA_TRANSPORT set?)");
	aai_conn_free(c);
	srv_stop(&s);

	srv_start(&s, "tcp://127.0.0.1:0", NULL);
	cr_assert_eq(aai_dial(&c, s.url, NULL), 0);
	cr_assert_eq(aai_sock_rx_cap(c), 4096);
	aai_conn_free(c);
	// nng_streams picks nng's streams for this connection only.
	aai_tp_opts o = {.nng_streams = true};
	srv_stop(&s);
	srv_start(&s, "tcp://127.0.0.1:0", &o);
	cr_assert_eq(aai_dial(&c, s.url, &o), 0);
	cr_assert_eq(aai_sock_rx_cap(c), 0);
	side me;
	side_init(&me, false);
	aai_conn_start(c, &side_cbs, &me);
	cr_assert_eq(aai_conn_send(c, "x", 1), 0);
	side_wait_frames(&me, 1);
	cr_assert_eq(me.frames, 1);
	aai_conn_free(c);
	srv_stop(&s);
	side_fini(&me);
}

// ---- writes the socket cannot take: finished by the loop thread ----

// The peer does not read while 8 MiB (ipc; our socket buffer is 2 MiB)
// are sent into a socket whose receive buffer is tiny: every send returns at
// once (the test thread would otherwise hang here), then the peer reads it
// all, in order.
static void
slow_reader(bool tcp)
{
	enum { LEN = 64 * 1024 };
	// TCP: a tiny window stalls loopback TCP in zero-window probes, so
	// a 64 KiB buffer and 16 MiB, far beyond what both sides buffer.
	const uint32_t N = tcp ? 256 : 128;
	const char *url = NULL;
	int port = 0, lfd;
	char dial[128];
	if (tcp) {
		lfd = raw_tcp_listen(&port);
		snprintf(dial, sizeof(dial), "tcp://127.0.0.1:%d", port);
	} else {
		url = ipc_url();
		lfd = raw_unix_listen(url, 4);
		snprintf(dial, sizeof(dial), "%s", url);
	}
	aai_conn *c;
	cr_assert_eq(aai_dial(&c, dial, NULL), 0);
	int fd = accept(lfd, NULL, NULL);
	cr_assert_geq(fd, 0);
	int small = tcp ? 65536 : 4096;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
	side me;
	side_init(&me, false);
	aai_conn_start(c, &side_cbs, &me);
	uint8_t *buf = malloc(LEN);
	for (uint32_t i = 0; i < N; i++) {
		memset(buf, (int)(i & 0xff), LEN);
		cr_assert_eq(aai_conn_send(c, buf, LEN), 0);
	}
	// Now read: the loop thread writes the rest as room appears.
	uint8_t hdr[4];
	for (uint32_t i = 0; i < N; i++) {
		read_full(fd, hdr, 4);
		uint32_t len = ((uint32_t)hdr[0] << 24) |
		               ((uint32_t)hdr[1] << 16) |
		               ((uint32_t)hdr[2] << 8) | hdr[3];
		cr_assert_eq(len, LEN);
		read_full(fd, buf, LEN);
		for (size_t k = 0; k < LEN; k += 997) {
			cr_assert_eq(buf[k], (uint8_t)i, "frame %u", i);
		}
	}
	cr_assert_eq(me.downs, 0);
	aai_conn_free(c);
	cr_assert_eq(me.downs, 1);
	close(fd);
	close(lfd);
	if (url != NULL) {
		unlink(url + 6);
	}
	side_fini(&me);
	free(buf);
}

Test(transport_sock, slow_reader_ipc)
{
	slow_reader(false);
}

Test(transport_sock, slow_reader_tcp)
{
	slow_reader(true);
}

// ---- receive buffer: grows to a 1 MiB frame, shrinks back ----

Test(transport_sock, rx_buffer_grows_and_shrinks)
{
	server s;
	srv_start(&s, ipc_url(), NULL);
	aai_conn *c;
	cr_assert_eq(aai_dial(&c, s.url, NULL), 0);
	side me;
	side_init(&me, false);
	aai_conn_start(c, &side_cbs, &me);
	size_t big = 1u << 20;
	uint8_t *buf = calloc(1, big);
	cr_assert_eq(aai_conn_send(c, buf, big), 0);
	side_wait_frames(&me, 1);
	side *sd = srv_wait_side(&s, 0);
	cr_assert_eq(sd->frames, 1);
	// The frame was read into one buffer of exactly its size.
	cr_assert_eq(sd->max_cap, big + 4, "server cap %zu", sd->max_cap);
	cr_assert_eq(me.max_cap, big + 4, "client cap %zu", me.max_cap);
	// Idle now: both go back to 4 KiB (the loop's sweep; the suite's
	// timeout bounds the wait).
	while (aai_sock_rx_cap(c) != 4096 ||
	       aai_sock_rx_cap(sd->conn) != 4096) {
		nap_ms(20);
	}
	// Small frames do not grow it again.
	for (int i = 0; i < 100; i++) {
		cr_assert_eq(aai_conn_send(c, buf, 100), 0);
	}
	side_wait_frames(&me, 101);
	cr_assert_eq(me.frames, 101);
	cr_assert_leq(aai_sock_rx_cap(c), 64 * 1024);
	aai_conn_free(c);
	srv_stop(&s);
	side_fini(&me);
	free(buf);
}

Test(transport_sock, rx_buffer_bounded_by_max_frame)
{
	aai_tp_opts o = {.max_frame = 100000};
	server s;
	srv_start(&s, "tcp://127.0.0.1:0", &o);
	aai_conn *c;
	cr_assert_eq(aai_dial(&c, s.url, &o), 0);
	side me;
	side_init(&me, false);
	aai_conn_start(c, &side_cbs, &me);
	uint8_t *buf = calloc(1, 100000);
	cr_assert_eq(aai_conn_send(c, buf, 100000), 0);
	side_wait_frames(&me, 1);
	side *sd = srv_wait_side(&s, 0);
	cr_assert_eq(sd->max_cap, 100004);
	cr_assert_eq(aai_conn_send(c, buf, 100001), AA_EMSGSIZE);
	aai_conn_free(c);
	srv_stop(&s);
	side_fini(&me);
	free(buf);
}

// ---- many connections on one listener ----

Test(transport_sock, many_conns_one_listener)
{
	enum { N = 200 };
	static server s;
	static side mine[N];
	static aai_conn *cs[N];
	srv_start(&s, ipc_url(), NULL);
	for (int i = 0; i < N; i++) {
		side_init(&mine[i], false);
		cr_assert_eq(aai_dial(&cs[i], s.url, NULL), 0, "conn %d", i);
		aai_conn_start(cs[i], &side_cbs, &mine[i]);
	}
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < N; i++) {
			cr_assert_eq(aai_conn_send(cs[i], &i, sizeof(i)), 0);
		}
		for (int i = 0; i < N; i++) {
			side_wait_frames(&mine[i], (size_t)round + 1);
			cr_assert_eq(mine[i].frames, (size_t)round + 1);
		}
	}
	srv_wait_side(&s, N - 1);
	for (int i = 0; i < N; i++) {
		aai_conn_free(cs[i]);
		cr_assert_eq(mine[i].err, AA_ECLOSED);
		side_fini(&mine[i]);
	}
	// The server sides see the clients go.
	for (int i = 0; i < N; i++) {
		cr_assert_eq(side_wait_down(&s.sides[i]), AA_ECONNLOST);
	}
	srv_stop(&s);
}

// ---- peer reset and close ----

Test(transport_sock, peer_reset_tcp)
{
	int port;
	int lfd = raw_tcp_listen(&port);
	char url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	aai_conn *c;
	cr_assert_eq(aai_dial(&c, url, NULL), 0);
	int fd = accept(lfd, NULL, NULL);
	cr_assert_geq(fd, 0);
	side me;
	side_init(&me, false);
	aai_conn_start(c, &side_cbs, &me);
	cr_assert_eq(aai_conn_send(c, "abc", 3), 0);
	uint8_t got[7];
	read_full(fd, got, 7);
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)),
	             0);
	close(fd); // RST
	cr_assert_eq(side_wait_down(&me), AA_ECONNLOST);
	// Sends after the reset fail cleanly; no SIGPIPE.
	cr_assert_eq(aai_conn_send(c, "abc", 3), AA_ECLOSED);
	aai_conn_free(c);
	close(lfd);
	side_fini(&me);
}

// The peer closes while we keep sending: no SIGPIPE kills the process,
// the connection goes down with AA_ECONNLOST.
Test(transport_sock, peer_gone_no_sigpipe_ipc)
{
	const char *url = ipc_url();
	int lfd = raw_unix_listen(url, 4);
	aai_conn *c;
	cr_assert_eq(aai_dial(&c, url, NULL), 0);
	int fd = accept(lfd, NULL, NULL);
	side me;
	side_init(&me, false);
	aai_conn_start(c, &side_cbs, &me);
	close(fd);
	static uint8_t buf[65536];
	int rv = 0;
	for (int i = 0; i < 1000 && rv == 0; i++) {
		rv = aai_conn_send(c, buf, sizeof(buf));
	}
	cr_assert_eq(side_wait_down(&me), AA_ECONNLOST);
	aai_conn_free(c);
	close(lfd);
	unlink(url + 6);
	side_fini(&me);
}

// ---- the drop past send_max, with a last frame ----

// limit_dial dials a raw listener (ipc or tcp) with a 64 KiB send_max, a
// budget and a last frame, starts the connection and returns the raw
// peer's fd.
static int
limit_dial(aai_conn **cp, bool tcp, side *me, aai_tp_budget *b)
{
	int port;
	const char *url = NULL;
	char tcp_url[64];
	int lfd;
	if (tcp) {
		lfd = raw_tcp_listen(&port);
		snprintf(tcp_url, sizeof(tcp_url), "tcp://127.0.0.1:%d", port);
		url = tcp_url;
	} else {
		url = ipc_url();
		lfd = raw_unix_listen(url, 4);
	}
	aai_tp_opts o = {.max_frame = 16 * 1024,
	                 .send_max = 64 * 1024,
	                 .budget = b,
	                 .limit_frame = "BYE!",
	                 .limit_len = 4};
	cr_assert_eq(aai_dial(cp, url, &o), 0);
	int fd = accept(lfd, NULL, NULL);
	cr_assert_geq(fd, 0);
	close(lfd);
	if (!tcp) {
		unlink(url + 6);
	}
	side_init(me, false);
	aai_conn_start(*cp, &side_cbs, me);
	return fd;
}

// limit_flood sends 16 KiB frames, frame i filled with the byte i, until
// the drop (AA_ELIMIT); returns the frames accepted.
static int
limit_flood(aai_conn *c)
{
	static uint8_t buf[16 * 1024];
	for (int i = 0;; i++) {
		memset(buf, i & 0xff, sizeof(buf));
		int rv = aai_conn_send(c, buf, sizeof(buf));
		if (rv != 0) {
			cr_assert_eq(rv, AA_ELIMIT, "%s", aa_strerror(rv));
			return i;
		}
		cr_assert_lt(i, 1 << 20, "never dropped");
	}
}

// A peer that stops reading until past send_max, then reads everything:
// whole frames in order (the one being written was finished, the queued
// ones are gone), the last frame, then EOF; the budget is given back at
// the drop, while the connection is still up.
static void
limit_reads_the_last_frame(bool tcp)
{
	aai_tp_set_linger_ms(600 * 1000); // never within this test
	aai_tp_budget b = {.max = 1 << 30};
	aai_conn *c;
	side me;
	int fd = limit_dial(&c, tcp, &me, &b);
	int sent = limit_flood(c);
	cr_assert_eq(atomic_load(&b.used), 0, "the budget is back at once");
	cr_assert_eq(aai_conn_send(c, "x", 1), AA_ELIMIT, "it lingers");
	pthread_mutex_lock(&me.mtx);
	cr_assert_eq(me.downs, 0, "still up while it lingers");
	pthread_mutex_unlock(&me.mtx);
	static uint8_t frame[16 * 1024];
	uint8_t hdr[4];
	int got = 0;
	for (;;) {
		read_full(fd, hdr, 4);
		size_t len = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 |
		             (size_t)hdr[2] << 8 | hdr[3];
		if (len == 4) {
			read_full(fd, frame, 4);
			cr_assert_eq(memcmp(frame, "BYE!", 4), 0);
			break;
		}
		cr_assert_eq(len, sizeof(frame), "a whole frame");
		read_full(fd, frame, len);
		for (size_t k = 0; k < len; k++) {
			cr_assert_eq(frame[k], got & 0xff, "frame %d", got);
		}
		got++;
	}
	cr_assert_leq(got, sent);
	cr_assert_lt(got, sent, "queued frames were discarded");
	test_note("%d of %d frames, then the last frame", got, sent);
	cr_assert_eq(read(fd, frame, 1), 0, "EOF after the last frame");
	close(fd); // the peer's close ends the linger
	cr_assert_eq(side_wait_down(&me), AA_ELIMIT);
	aai_conn_free(c);
	side_fini(&me);
	cr_assert_eq(atomic_load(&b.used), 0);
	aai_tp_set_linger_ms(0);
}

Test(transport_sock, limit_drop_last_frame_ipc)
{
	limit_reads_the_last_frame(false);
}

Test(transport_sock, limit_drop_last_frame_tcp)
{
	limit_reads_the_last_frame(true);
}

// A peer that never reads again: the linger (1 s) closes the connection,
// down(AA_ELIMIT), and the peer reads to EOF (no hang).
static void
limit_never_reads(bool tcp)
{
	aai_conn *c;
	side me;
	int fd = limit_dial(&c, tcp, &me, NULL);
	(void)limit_flood(c);
	cr_assert_eq(side_wait_down(&me), AA_ELIMIT);
	static uint8_t buf[65536];
	ssize_t n;
	while ((n = read(fd, buf, sizeof(buf))) > 0) {
	}
	cr_assert_geq(n, 0, "EOF (an RST would be a lost stream)");
	close(fd);
	aai_conn_free(c);
	side_fini(&me);
}

Test(transport_sock, limit_drop_never_read_ipc)
{
	limit_never_reads(false);
}

Test(transport_sock, limit_drop_never_read_tcp)
{
	limit_never_reads(true);
}

// ---- dial ----

Test(transport_sock, dial_refused)
{
	int port;
	int lfd = raw_tcp_listen(&port);
	close(lfd); // nobody listens there now
	char url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	aai_conn *c;
	cr_assert_eq(aai_dial(&c, url, NULL), AA_ECONNREF);
	cr_assert_eq(aai_dial(&c, "ipc:///tmp/aa-tps-nobody.sock", NULL),
	             AA_ECONNREF);
	// A socket file nobody listens on.
	const char *u = ipc_url();
	lfd = raw_unix_listen(u, 4);
	close(lfd);
	cr_assert_eq(aai_dial(&c, u, NULL), AA_ECONNREF);
	unlink(u + 6);
}

// A listener that never accepts, with a full backlog: the dial gives up
// after connect_timeout_ms.
Test(transport_sock, dial_timeout_full_backlog)
{
	const char *url = ipc_url();
	int lfd = raw_unix_listen(url, 0);
	aai_tp_opts o = {.connect_timeout_ms = 100};
	aai_conn *cs[8];
	int n = 0, rv = 0;
	while (n < 8) {
		rv = aai_dial(&cs[n], url, &o);
		if (rv != 0) {
			break;
		}
		n++;
	}
	cr_assert_eq(rv, AA_ETIMEDOUT, "after %d dials: %s", n,
	             aa_strerror(rv));
	for (int i = 0; i < n; i++) {
		aai_conn_free(cs[i]);
	}
	close(lfd);
	unlink(url + 6);
}

Test(transport_sock, bad_urls)
{
	aai_conn *c;
	aai_listener *l;
	cr_assert_eq(aai_dial(&c, "tcp://127.0.0.1", NULL), AA_EINVAL);
	cr_assert_eq(aai_dial(&c, "tcp://127.0.0.1:", NULL), AA_EINVAL);
	cr_assert_eq(aai_dial(&c, "tcp://127.0.0.1:99999", NULL), AA_EINVAL);
	cr_assert_eq(aai_dial(&c, "tcp://127.0.0.1:12x", NULL), AA_EINVAL);
	cr_assert_eq(aai_dial(&c, "tcp://[::1:80", NULL), AA_EINVAL);
	cr_assert_eq(aai_dial(&c, "ipc://", NULL), AA_EINVAL);
	char longp[200];
	memset(longp, 'a', sizeof(longp));
	memcpy(longp, "ipc:///", 7);
	longp[sizeof(longp) - 1] = '\0';
	cr_assert_eq(aai_dial(&c, longp, NULL), AA_EINVAL);
	cr_assert_eq(aai_listen(&l, longp, NULL, srv_accept, NULL), AA_EINVAL);
	cr_assert_eq(aai_listen(&l, "tcp://127.0.0.1", NULL, srv_accept, NULL),
	             AA_EINVAL);
}

Test(transport_sock, address_in_use)
{
	server s;
	srv_start(&s, "tcp://127.0.0.1:0", NULL);
	aai_listener *l;
	cr_assert_eq(aai_listen(&l, s.url, NULL, srv_accept, NULL), AA_EBUSY);
	srv_stop(&s);

	const char *url = ipc_url();
	srv_start(&s, url, NULL);
	cr_assert_eq(aai_listen(&l, url, NULL, srv_accept, NULL), AA_EBUSY);
	srv_stop(&s);
	// The listener removed its socket file at close.
	cr_assert_neq(access(url + 6, F_OK), 0);
	// A live listener whose backlog is full: busy, found without waiting.
	int lfd = raw_unix_listen(url, 0);
	int fill[2];
	for (int i = 0; i < 2; i++) {
		fill[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
		struct sockaddr_un sa = {.sun_family = AF_UNIX};
		memcpy(sa.sun_path, url + 6, strlen(url + 6) + 1);
		(void)connect(fill[i], (struct sockaddr *)&sa, sizeof(sa));
	}
	cr_assert_eq(aai_listen(&l, url, NULL, srv_accept, NULL), AA_EBUSY);
	close(fill[0]);
	close(fill[1]);
	close(lfd);
	unlink(url + 6);
	// A stale socket file (nobody listening) is replaced.
	close(raw_unix_listen(url, 4));
	cr_assert_eq(access(url + 6, F_OK), 0);
	srv_start(&s, url, NULL);
	aai_conn *c;
	cr_assert_eq(aai_dial(&c, url, NULL), 0);
	aai_conn_free(c);
	srv_stop(&s);
}

// tcp://localhost:port and tcp://[::1]:port (when the host has IPv6).
Test(transport_sock, url_forms)
{
	server s;
	srv_start(&s, "tcp://127.0.0.1:0", NULL);
	char url[64];
	snprintf(url, sizeof(url), "tcp://localhost:%d",
	         aai_listener_port(s.l));
	aai_conn *c;
	int rv = aai_dial(&c, url, NULL);
	cr_assert_eq(rv, 0, "%s: %s", url, aa_strerror(rv));
	aai_conn_free(c);
	srv_stop(&s);

	aai_listener *l;
	if (aai_listen(&l, "tcp://[::1]:0", NULL, srv_accept, NULL) != 0) {
		test_note("no IPv6 loopback: [::1] not tested");
		return;
	}
	aai_listener_free(l);
	srv_start(&s, "tcp://[::1]:0", NULL);
	cr_assert_eq(strncmp(s.url, "tcp://[::1]:", 12), 0);
	cr_assert_eq(aai_dial(&c, s.url, NULL), 0);
	side me;
	side_init(&me, false);
	aai_conn_start(c, &side_cbs, &me);
	cr_assert_eq(aai_conn_send(c, "hi", 2), 0);
	side_wait_frames(&me, 1);
	cr_assert_eq(me.frames, 1);
	aai_conn_free(c);
	srv_stop(&s);
	side_fini(&me);
}

// ---- flow control: a paused reader resumes when the peer drains ----

enum { PR_N = 256, PR_LEN = 16 * 1024 };

typedef struct raw_writer {
	int fd;
	uint8_t *frame; // header + PR_LEN bytes
} raw_writer;

static void *
raw_write_all(void *arg)
{
	raw_writer *w = arg;
	for (int i = 0; i < PR_N; i++) {
		size_t off = 0;
		while (off < 4 + PR_LEN) {
			ssize_t n =
			    write(w->fd, w->frame + off, 4 + PR_LEN - off);
			if (n <= 0) {
				return NULL;
			}
			off += (size_t)n;
		}
	}
	return NULL;
}

// The server pauses reading while its echoes are not read (send_pause);
// a raw client writes 4 MiB without reading, then reads every echo: the
// drain resumes the server's reading, and nothing is lost.
Test(transport_sock, pause_and_resume)
{
	aai_tp_opts so = {.send_pause = 64 * 1024};
	server s;
	srv_start(&s, ipc_url(), &so);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	memcpy(sa.sun_path, s.url + 6, strlen(s.url + 6) + 1);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	uint8_t *frame = calloc(1, 4 + PR_LEN);
	frame[1] = (PR_LEN >> 16) & 0xff;
	frame[2] = (PR_LEN >> 8) & 0xff;
	frame[3] = PR_LEN & 0xff;
	raw_writer w = {fd, frame};
	thr t;
	thr_start(&t, raw_write_all, &w);
	side *sd = srv_wait_side(&s, 0);
	uint8_t *got = malloc(4 + PR_LEN);
	for (int i = 0; i < PR_N; i++) {
		read_full(fd, got, 4 + PR_LEN);
		cr_assert_eq(memcmp(got, frame, 4 + PR_LEN), 0);
	}
	thr_join(&t);
	// Read under the side's lock: the loop thread writes downs there
	// once close() below ends the connection.
	pthread_mutex_lock(&sd->mtx);
	size_t frames = sd->frames;
	int downs = sd->downs;
	pthread_mutex_unlock(&sd->mtx);
	cr_assert_eq(frames, PR_N);
	cr_assert_eq(downs, 0);
	close(fd);
	cr_assert_eq(side_wait_down(sd), AA_ECONNLOST);
	srv_stop(&s);
	free(frame);
	free(got);
}

// ---- accept out of fds: paused, then resumed ----

static gate accept_paused;

static void
on_checkpoint(void *arg, const char *name, void *subject)
{
	(void)arg;
	(void)subject;
	if (strcmp(name, "transport.accept_paused") == 0) {
		gate_open(&accept_paused);
	}
}

// The process runs out of fds with a connection pending: the listener's
// loop stops accepting for a while (instead of spinning on the readable
// socket) and accepts it once fds are free again.
Test(transport_sock, accept_out_of_fds_recovers)
{
	gate_init(&accept_paused);
	aa_checkpoint_set(on_checkpoint, NULL);
	server s;
	srv_start(&s, ipc_url(), NULL);
	int cfd = socket(AF_UNIX, SOCK_STREAM, 0);
	cr_assert_geq(cfd, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	memcpy(sa.sun_path, s.url + 6, strlen(s.url + 6) + 1);

	// Use up every fd number below a limit just above the highest open.
	struct rlimit old, low;
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &old), 0);
	int maxfd = 0;
	for (int fd = 0; fd < 4096; fd++) {
		if (fcntl(fd, F_GETFD) != -1) {
			maxfd = fd;
		}
	}
	low = old;
	low.rlim_cur = (rlim_t)maxfd + 1;
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &low), 0);
	static int fillers[4096];
	int nfill = 0;
	for (;;) {
		int fd = open("/dev/null", O_RDONLY);
		if (fd < 0) {
			break;
		}
		fillers[nfill++] = fd;
	}
	cr_assert_eq(connect(cfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	gate_wait(&accept_paused); // accept4 said EMFILE
	for (int i = 0; i < nfill; i++) {
		close(fillers[i]);
	}
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &old), 0);
	side *sd = srv_wait_side(&s, 0); // accepted after the pause
	cr_assert_not_null(sd->conn);
	close(cfd);
	cr_assert_eq(side_wait_down(sd), AA_ECONNLOST);
	srv_stop(&s);
	aa_checkpoint_set(NULL, NULL);
	gate_fini(&accept_paused);
}

// ---- idle loops spin only with a spinner slot ----

// ping_pong makes n round trips of one byte between a dialed conn and an
// echoing server side.
static void
ping_pong(int n)
{
	server s;
	srv_start(&s, ipc_url(), NULL);
	aai_conn *c;
	cr_assert_eq(aai_dial(&c, s.url, NULL), 0);
	side me;
	side_init(&me, false);
	aai_conn_start(c, &side_cbs, &me);
	for (int i = 0; i < n; i++) {
		cr_assert_eq(aai_conn_send(c, "p", 1), 0);
		side_wait_frames(&me, (size_t)i + 1);
	}
	aai_conn_free(c);
	srv_stop(&s);
	side_fini(&me);
}

Test(transport_sock, idle_loops_spin_only_with_a_slot)
{
	uint64_t s0, h0, s1, h1;
	// No slot: nobody spins, however short the gaps.
	aai_inproc_spin_config(0, -1);
	aai_sock_spins(&s0, &h0);
	ping_pong(200);
	aai_sock_spins(&s1, &h1);
	cr_assert_eq(s1, s0, "a loop spun without a slot");
	// One slot: the loops spin (at the least every probe, whatever the
	// gaps look like on a slow or busy machine).
	aai_inproc_spin_config(1, -1);
	ping_pong(200);
	aai_sock_spins(&s1, &h1);
	cr_assert_gt(s1, s0, "no loop ever spun");
	test_note("200 round trips: %llu spins, %llu found an event",
	          (unsigned long long)(s1 - s0),
	          (unsigned long long)(h1 - h0));
	aai_inproc_spin_config(-1, -1);
}
