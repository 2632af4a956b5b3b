// bench_grpc.cc: the echo and cancel of bench_proxy measured against gRPC
// C++, the peer figures of docs/PERFORMANCE.md.
//
//   echo    64-byte unary Echo, one call outstanding, after a warm-up:
//           round trip p50/p99 with the async completion-queue API (the
//           closest to an aa_client_call with a completion handler), the
//           same with the sync stub, and CPU time per async call of both
//           processes.
//   cancel  in-flight cancel: Hold calls the server has received (its
//           Count says so) are cancelled one by one with
//           ClientContext::TryCancel; timed from just before TryCancel to
//           the moment the call's tag comes out of the completion queue
//           with status CANCELLED ("to handler"), and inside TryCancel.
//
// Processes. The server is this program re-executed with --server ADDRESS
// (fork, then exec at once, as bench_proxy does), one per transport, both
// started before this process makes any gRPC object, so that no gRPC
// thread exists at fork time. It prints "port N" once listening (the port
// it picked for 127.0.0.1:0; 0 for unix:) and ends on SIGTERM. The parent
// removes the unix socket file after the server exited, and also from an
// exit path or a signal (SIGINT, SIGTERM, SIGHUP), so that no process or
// socket file outlives a run.
//
// Server. The async API, one completion queue, one thread draining it.
// Each call is an object whose tags come back on that queue:
//   Echo, Count: REQUESTED --tag ok--> FINISHING --tag--> deleted.
//   Hold: AsyncNotifyWhenDone before RequestHold, so two tags: the request
//   tag (matched: count a start, request the next) and the done tag (the
//   client cancelled: count it). Deleted once both came back. No Finish is
//   ever sent: only a cancel ends a Hold.
// Races. Only the queue thread touches call objects; the counters are
// atomics because the main thread prints them. Shutdown races the queue
// thread: no operation may start on the queue once it is shut down, so
// each tag is handled under the server's lock, and the main thread sets
// "closing" under that lock before shutting down the server and then the
// queue; a call handled after that starts nothing (no Finish, no new
// request). A request tag that comes back !ok means shutdown, and the
// Hold's done tag may then never come: every call object is also in a
// registry, and what is left there is deleted after the queue was drained
// (Next returned false), when no tag can come any more.
//
// Client. One channel and one completion queue per transport, one thread.
// With one call outstanding, the tag that comes out is the call's own (the
// program checks it). Every wait on the queue has a deadline: a lost tag is
// a functional error, never a hang. Functional errors (a wrong payload, a
// status other than OK or CANCELLED, a tag out of order, a server that did
// not see the Holds or their cancels, a server that did not exit cleanly)
// make the exit status nonzero; times never do.
//
// Usage: bench_grpc [--smoke] [--reps N] [--json] [--transport unix|tcp]
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.grpc.pb.h"

using aa::bench::Bench;
using aa::bench::Counts;
using aa::bench::Payload;

namespace
{

constexpr int payload_size = 64;
constexpr int wait_secs = 10; // bound on every wait for a tag or a count

bool smoke;
bool json;
int reps = 5;
int warmup_calls = 2000;
int echo_calls = 10000;
int cancel_count = 2000;
int cancel_batch = 500;
int failures;
const char *only_transport;
char self_path[512];

// ---- Small helpers ----

uint64_t
now_ns()
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t
cpu_ns(clockid_t clock)
{
	struct timespec ts;
	if (clock_gettime(clock, &ts) != 0) {
		return 0;
	}
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

// check records a functional failure: the exit status reports them.
void
check(bool ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "bench_grpc: FAILED: %s\n", what);
		failures++;
	}
}

// pct returns the p-th percentile of v (sorted in place), in us.
double
pct(std::vector<uint64_t> &v, int p)
{
	if (v.empty()) {
		return 0;
	}
	std::sort(v.begin(), v.end());
	return (double)v[v.size() * (size_t)p / 100] / 1000.0;
}

double
median(std::vector<double> v)
{
	if (v.empty()) {
		return 0;
	}
	std::sort(v.begin(), v.end());
	return v[v.size() / 2];
}

std::string
load_average()
{
	char buf[64] = "?";
	FILE *f = fopen("/proc/loadavg", "r");
	if (f != nullptr) {
		if (fscanf(f, "%63s", buf) != 1) {
			strcpy(buf, "?");
		}
		fclose(f);
	}
	return buf;
}

std::chrono::system_clock::time_point
wait_deadline()
{
	return std::chrono::system_clock::now() +
	       std::chrono::seconds(wait_secs);
}

// ---- The server (--server ADDRESS) ----

struct Server;

// A call object; tags are pointers to its Tag members.
struct Call {
	virtual ~Call() = default;
	virtual void proceed(int which, bool ok) = 0;
};

struct Tag {
	Call *call;
	int which;
};

struct Server {
	Bench::AsyncService service;
	std::unique_ptr<grpc::ServerCompletionQueue> cq;
	std::unique_ptr<grpc::Server> server;
	std::mutex mtx;         // held while a tag is handled
	bool closing = false;   // under mtx: start no operation any more
	std::set<Call *> calls; // every live call object (queue thread only)
	std::atomic<uint64_t> holds_started{0};
	std::atomic<uint64_t> holds_cancelled{0};
	std::atomic<uint64_t> echoes{0};

	void forget(Call *c)
	{
		calls.erase(c);
		delete c;
	}
};

struct EchoCall : Call {
	Server *s;
	grpc::ServerContext ctx;
	Payload req;
	grpc::ServerAsyncResponseWriter<Payload> responder{&ctx};
	Tag tag{this, 0};
	bool finishing = false;

	explicit EchoCall(Server *srv) : s(srv)
	{
		s->calls.insert(this);
		s->service.RequestEcho(&ctx, &req, &responder, s->cq.get(),
		                       s->cq.get(), &tag);
	}

	void proceed(int which, bool ok) override
	{
		if (finishing) {
			s->forget(this);
			return;
		}
		if (!ok || s->closing) { // shutdown
			s->forget(this);
			return;
		}
		new EchoCall(s);
		finishing = true;
		s->echoes++;
		responder.Finish(req, grpc::Status::OK, &tag);
	}
};

struct CountCall : Call {
	Server *s;
	grpc::ServerContext ctx;
	Payload req;
	Counts reply;
	grpc::ServerAsyncResponseWriter<Counts> responder{&ctx};
	Tag tag{this, 0};
	bool finishing = false;

	explicit CountCall(Server *srv) : s(srv)
	{
		s->calls.insert(this);
		s->service.RequestCount(&ctx, &req, &responder, s->cq.get(),
		                        s->cq.get(), &tag);
	}

	void proceed(int which, bool ok) override
	{
		if (finishing || !ok || s->closing) {
			s->forget(this);
			return;
		}
		new CountCall(s);
		finishing = true;
		reply.set_holds_started(s->holds_started.load());
		reply.set_holds_cancelled(s->holds_cancelled.load());
		reply.set_echoes(s->echoes.load());
		responder.Finish(reply, grpc::Status::OK, &tag);
	}
};

// HoldCall: the request tag (which 0) and the done tag (which 1).
struct HoldCall : Call {
	Server *s;
	grpc::ServerContext ctx;
	Payload req;
	grpc::ServerAsyncResponseWriter<Payload> responder{&ctx};
	Tag request_tag{this, 0};
	Tag done_tag{this, 1};
	bool matched = false;
	bool done = false;

	explicit HoldCall(Server *srv) : s(srv)
	{
		s->calls.insert(this);
		ctx.AsyncNotifyWhenDone(&done_tag);
		s->service.RequestHold(&ctx, &req, &responder, s->cq.get(),
		                       s->cq.get(), &request_tag);
	}

	void proceed(int which, bool ok) override
	{
		if (which == 0) {
			if (!ok) {
				// Shutdown: the done tag may never come; the
				// registry deletes this after the drain.
				return;
			}
			matched = true;
			if (!s->closing) {
				new HoldCall(s);
			}
			s->holds_started++;
		} else {
			done = true;
			if (ctx.IsCancelled()) {
				s->holds_cancelled++;
			}
		}
		if (matched && done) {
			s->forget(this);
		}
	}
};

void
drain(Server *s)
{
	void *t;
	bool ok;
	while (s->cq->Next(&t, &ok)) {
		Tag *tag = static_cast<Tag *>(t);
		std::lock_guard<std::mutex> hold(s->mtx);
		tag->call->proceed(tag->which, ok);
	}
}

// server_main serves ADDRESS until SIGTERM; it prints "port N" once
// listening, and its counters on stderr when it ends.
int
server_main(const char *address)
{
	// Every thread gRPC starts inherits the blocked mask, so sigwait
	// gets the SIGTERM.
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &term, nullptr);

	Server s;
	int port = 0;
	grpc::ServerBuilder b;
	b.AddListeningPort(address, grpc::InsecureServerCredentials(), &port);
	b.RegisterService(&s.service);
	s.cq = b.AddCompletionQueue();
	s.server = b.BuildAndStart();
	if (s.server == nullptr) {
		fprintf(stderr, "bench_grpc server: cannot listen on %s\n",
		        address);
		return 1;
	}
	new EchoCall(&s);
	new CountCall(&s);
	new HoldCall(&s);
	std::thread loop(drain, &s);
	printf("port %d\n", strncmp(address, "unix:", 5) == 0 ? 0 : port);
	fflush(stdout);

	int sig = 0;
	sigwait(&term, &sig);
	fprintf(stderr,
	        "bench_grpc server %s: echoes %llu holds started %llu "
	        "cancelled %llu\n",
	        address, (unsigned long long)s.echoes.load(),
	        (unsigned long long)s.holds_started.load(),
	        (unsigned long long)s.holds_cancelled.load());
	// Shutdown cancels what is still running, then the queue drains.
	{
		std::lock_guard<std::mutex> hold(s.mtx);
		s.closing = true;
	}
	s.server->Shutdown(std::chrono::system_clock::now());
	s.cq->Shutdown();
	loop.join();
	for (Call *c : s.calls) {
		delete c;
	}
	s.calls.clear();
	s.server.reset();
	s.cq.reset();
	if (strncmp(address, "unix:", 5) == 0) {
		unlink(address + 5);
	}
	return 0;
}

// ---- Server processes ----

struct ServerProc {
	const char *transport = nullptr; // "unix" or "tcp"
	std::string address;             // what the client dials
	char socket_path[128] = "";      // the unix socket file, or ""
	pid_t pid = 0;
};

ServerProc procs[2];

// reap_servers kills what is left and removes the socket files; for exit
// paths and signals (async-signal-safe calls only).
void
reap_servers()
{
	for (ServerProc &p : procs) {
		if (p.pid > 0) {
			kill(p.pid, SIGKILL);
			waitpid(p.pid, nullptr, 0);
			p.pid = 0;
		}
		if (p.socket_path[0] != '\0') {
			unlink(p.socket_path);
		}
	}
}

void
on_signal(int sig)
{
	reap_servers();
	_exit(128 + sig);
}

[[noreturn]] void
die(const char *what)
{
	fprintf(stderr, "bench_grpc: %s\n", what);
	fflush(stdout);
	reap_servers();
	_exit(1);
}

// spawn_server starts "--server ADDRESS" for p and reads the port it bound.
void
spawn_server(ServerProc &p)
{
	std::string listen; // built before fork: no allocation in the child
	if (strcmp(p.transport, "unix") == 0) {
		snprintf(p.socket_path, sizeof(p.socket_path),
		         "/tmp/aa-bench-grpc-%d.sock", (int)getpid());
		listen = std::string("unix:") + p.socket_path;
	} else {
		listen = "127.0.0.1:0";
	}
	int fds[2];
	if (pipe(fds) != 0) {
		die("pipe failed");
	}
	pid_t pid = fork();
	if (pid < 0) {
		die("fork failed");
	}
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		dup2(fds[1], 1);
		close(fds[0]);
		close(fds[1]);
		execl(self_path, self_path, "--server", listen.c_str(),
		      (char *)nullptr);
		_exit(127);
	}
	p.pid = pid;
	close(fds[1]);
	FILE *f = fdopen(fds[0], "r");
	int port = -1;
	if (f == nullptr || fscanf(f, "port %d", &port) != 1) {
		die("the server process did not start");
	}
	fclose(f);
	if (strcmp(p.transport, "unix") == 0) {
		p.address = listen;
	} else {
		p.address = "127.0.0.1:" + std::to_string(port);
	}
}

// stop_server ends p's process with SIGTERM; a server that does not exit
// cleanly within 10 s is a functional error (and is killed).
void
stop_server(ServerProc &p)
{
	if (p.pid <= 0) {
		return;
	}
	kill(p.pid, SIGTERM);
	int status = 0;
	bool exited = false;
	for (int i = 0; i < 1000; i++) {
		if (waitpid(p.pid, &status, WNOHANG) == p.pid) {
			exited = true;
			break;
		}
		usleep(10000);
	}
	if (!exited) {
		kill(p.pid, SIGKILL);
		waitpid(p.pid, nullptr, 0);
	}
	check(exited && WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "server exited cleanly on SIGTERM");
	p.pid = 0;
	if (p.socket_path[0] != '\0') {
		unlink(p.socket_path);
		p.socket_path[0] = '\0';
	}
}

// ---- The client ----

struct Figures {
	bool failed = false; // a functional error: the figures mean nothing
	double echo_p50 = 0, echo_p99 = 0;
	double sync_p50 = 0, sync_p99 = 0;
	double cpu_client = 0, cpu_server = 0; // us per async echo call
	double handler_p50 = 0, handler_p99 = 0;
	double inside_p50 = 0, inside_p99 = 0;
};

struct Client {
	std::shared_ptr<grpc::Channel> channel;
	std::unique_ptr<Bench::Stub> stub;
	grpc::CompletionQueue cq;
	Payload req;
	pid_t server_pid = 0;

	~Client()
	{
		cq.Shutdown();
		void *t;
		bool ok;
		while (cq.Next(&t, &ok)) {
		}
	}

	// next waits for the next tag; false (a functional error) after
	// wait_secs.
	bool next(void **t, bool *ok)
	{
		auto st = cq.AsyncNext(t, ok, wait_deadline());
		return st == grpc::CompletionQueue::GOT_EVENT;
	}

	bool count(Counts *c)
	{
		grpc::ClientContext ctx;
		ctx.set_deadline(wait_deadline());
		grpc::Status st = stub->Count(&ctx, req, c);
		check(st.ok(), "Count call");
		return st.ok();
	}
};

// echo_async makes n async Echo calls one at a time; samples (if not
// null) gets each round trip in ns.
void
echo_async(Client &c, int n, std::vector<uint64_t> *samples)
{
	for (int i = 0; i < n; i++) {
		grpc::ClientContext ctx;
		Payload reply;
		grpc::Status st;
		void *t = nullptr;
		bool ok = false;
		uint64_t t0 = now_ns();
		auto rpc = c.stub->AsyncEcho(&ctx, c.req, &c.cq);
		rpc->Finish(&reply, &st, &reply);
		bool got = c.next(&t, &ok);
		uint64_t t1 = now_ns();
		if (samples != nullptr) {
			samples->push_back(t1 - t0);
		}
		if (!got || t != &reply || !ok || !st.ok() ||
		    reply.data() != c.req.data()) {
			check(false, "async Echo answered the payload");
			return;
		}
	}
}

void
echo_sync(Client &c, int n, std::vector<uint64_t> *samples)
{
	for (int i = 0; i < n; i++) {
		grpc::ClientContext ctx;
		Payload reply;
		uint64_t t0 = now_ns();
		grpc::Status st = c.stub->Echo(&ctx, c.req, &reply);
		uint64_t t1 = now_ns();
		if (samples != nullptr) {
			samples->push_back(t1 - t0);
		}
		if (!st.ok() || reply.data() != c.req.data()) {
			check(false, "sync Echo answered the payload");
			return;
		}
	}
}

struct Hold {
	grpc::ClientContext ctx;
	Payload reply;
	grpc::Status st;
	std::unique_ptr<grpc::ClientAsyncResponseReader<Payload>> rpc;
};

// wait_counts polls Count until the server has seen at least started
// Holds and cancelled cancels; false after wait_secs.
bool
wait_counts(Client &c, uint64_t started, uint64_t cancelled)
{
	uint64_t end = now_ns() + (uint64_t)wait_secs * 1000000000u;
	do {
		Counts n;
		if (!c.count(&n)) {
			return false;
		}
		if (n.holds_started() >= started &&
		    n.holds_cancelled() >= cancelled) {
			return true;
		}
		usleep(200);
	} while (now_ns() < end);
	return false;
}

// cancel_round cancels count Holds that the server has received, in
// batches, and collects the two times of each cancel.
void
cancel_round(Client &c, std::vector<uint64_t> &inside,
             std::vector<uint64_t> &handler)
{
	Counts base;
	if (!c.count(&base)) {
		return;
	}
	uint64_t started = base.holds_started();
	uint64_t cancelled = base.holds_cancelled();
	for (int done = 0; done < cancel_count;) {
		int b = std::min(cancel_batch, cancel_count - done);
		std::vector<std::unique_ptr<Hold>> holds;
		for (int i = 0; i < b; i++) {
			auto h = std::make_unique<Hold>();
			h->rpc = c.stub->AsyncHold(&h->ctx, c.req, &c.cq);
			h->rpc->Finish(&h->reply, &h->st, h.get());
			holds.push_back(std::move(h));
		}
		started += (uint64_t)b;
		if (!wait_counts(c, started, cancelled)) {
			// The Holds would never end: no way to go on.
			die("the server did not receive every Hold");
		}
		for (auto &h : holds) {
			void *t = nullptr;
			bool ok = false;
			uint64_t t0 = now_ns();
			h->ctx.TryCancel();
			uint64_t t1 = now_ns();
			bool got = c.next(&t, &ok);
			uint64_t t2 = now_ns();
			if (!got) {
				die("a cancelled Hold never completed");
			}
			inside.push_back(t1 - t0);
			handler.push_back(t2 - t0);
			check(t == h.get() && ok &&
			          h->st.error_code() == grpc::CANCELLED,
			      "the cancelled Hold completed, CANCELLED");
		}
		cancelled += (uint64_t)b;
		check(wait_counts(c, started, cancelled),
		      "the server saw every cancel");
		done += b;
	}
}

// measure runs the rounds on one transport and returns the medians.
Figures
measure(ServerProc &p)
{
	Client c;
	c.server_pid = p.pid;
	c.req.set_data(std::string(payload_size, 'x'));
	c.channel =
	    grpc::CreateChannel(p.address, grpc::InsecureChannelCredentials());
	if (!c.channel->WaitForConnected(wait_deadline())) {
		die("cannot connect to the server");
	}
	c.stub = Bench::NewStub(c.channel);
	clockid_t server_clock;
	bool have_server_clock =
	    clock_getcpuclockid(p.pid, &server_clock) == 0;
	check(have_server_clock, "the server's CPU clock");

	echo_async(c, warmup_calls, nullptr);
	echo_sync(c, warmup_calls / 10, nullptr);

	std::vector<double> e50, e99, s50, s99, cpu_c, cpu_s, h50, h99, i50,
	    i99;
	int failures0 = failures;
	for (int r = 0; r < reps && failures == failures0; r++) {
		std::vector<uint64_t> v;
		v.reserve((size_t)echo_calls);
		uint64_t c0 = cpu_ns(CLOCK_PROCESS_CPUTIME_ID);
		uint64_t s0 = have_server_clock ? cpu_ns(server_clock) : 0;
		echo_async(c, echo_calls, &v);
		uint64_t c1 = cpu_ns(CLOCK_PROCESS_CPUTIME_ID);
		uint64_t s1 = have_server_clock ? cpu_ns(server_clock) : 0;
		cpu_c.push_back((double)(c1 - c0) / 1000.0 / echo_calls);
		cpu_s.push_back((double)(s1 - s0) / 1000.0 / echo_calls);
		e50.push_back(pct(v, 50));
		e99.push_back(pct(v, 99));

		v.clear();
		echo_sync(c, echo_calls, &v);
		s50.push_back(pct(v, 50));
		s99.push_back(pct(v, 99));

		std::vector<uint64_t> inside, handler;
		inside.reserve((size_t)cancel_count);
		handler.reserve((size_t)cancel_count);
		cancel_round(c, inside, handler);
		h50.push_back(pct(handler, 50));
		h99.push_back(pct(handler, 99));
		i50.push_back(pct(inside, 50));
		i99.push_back(pct(inside, 99));
		fprintf(stderr,
		        "bench_grpc: %s round %d: echo p50 %.1f us, cancel "
		        "to handler p50 %.1f us\n",
		        p.transport, r + 1, e50.back(), h50.back());
	}
	Figures f;
	if (failures != failures0) {
		f.failed = true;
		return f;
	}
	f.echo_p50 = median(e50);
	f.echo_p99 = median(e99);
	f.sync_p50 = median(s50);
	f.sync_p99 = median(s99);
	f.cpu_client = median(cpu_c);
	f.cpu_server = median(cpu_s);
	f.handler_p50 = median(h50);
	f.handler_p99 = median(h99);
	f.inside_p50 = median(i50);
	f.inside_p99 = median(i99);
	return f;
}

void
print_json(const Figures *f, const bool *ran)
{
	printf("{\"grpc\":{\"version\":\"%s\",\"reps\":%d,\"echo_calls\":%d,"
	       "\"cancels\":%d",
	       grpc::Version().c_str(), reps, echo_calls, cancel_count);
	for (int t = 0; t < 2; t++) {
		if (!ran[t]) {
			continue;
		}
		const Figures &x = f[t];
		if (x.failed) {
			printf(",\"%s\":{\"failed\":true}",
			       procs[t].transport);
			continue;
		}
		printf(",\"%s\":{\"echo_p50_us\":%.3f,\"echo_p99_us\":%.3f,"
		       "\"echo_cpu_us_per_call\":%.3f,"
		       "\"echo_cpu_client_us_per_call\":%.3f,"
		       "\"echo_cpu_server_us_per_call\":%.3f,"
		       "\"echo_sync_p50_us\":%.3f,\"echo_sync_p99_us\":%.3f,"
		       "\"cancel_to_handler_p50_us\":%.3f,"
		       "\"cancel_to_handler_p99_us\":%.3f,"
		       "\"inside_cancel_p50_us\":%.3f,"
		       "\"inside_cancel_p99_us\":%.3f}",
		       procs[t].transport, x.echo_p50, x.echo_p99,
		       x.cpu_client + x.cpu_server, x.cpu_client, x.cpu_server,
		       x.sync_p50, x.sync_p99, x.handler_p50, x.handler_p99,
		       x.inside_p50, x.inside_p99);
	}
	printf("}}\n");
}

void
print_tables(const Figures *f, const bool *ran)
{
	printf("# gRPC C++ %s: echo and cancel\n\n", grpc::Version().c_str());
	printf("Medians of %d rounds. Echo: 64-byte unary call, one "
	       "outstanding, %d calls per round after %d warm-up calls; CPU "
	       "time per async call of the client and the server process. "
	       "Cancel: %d in-flight Hold calls per round (batches of %d, "
	       "each received by the server first), ClientContext::TryCancel "
	       "until the call's tag came out of the completion queue with "
	       "CANCELLED. Each figure includes one clock_gettime pair.\n\n",
	       reps, echo_calls, warmup_calls, cancel_count, cancel_batch);
	printf("| transport | async echo p50 / p99 us | sync echo p50 / p99 "
	       "us | CPU us per async call, client + server | inside "
	       "TryCancel p50 / p99 us | cancel to handler p50 / p99 us |\n"
	       "| --- | --- | --- | --- | --- | --- |\n");
	for (int t = 0; t < 2; t++) {
		if (!ran[t]) {
			continue;
		}
		const Figures &x = f[t];
		if (x.failed) {
			printf(
			    "| %s | failed (see stderr) | - | - | - | - |\n",
			    procs[t].transport);
			continue;
		}
		printf("| %s | %.1f / %.1f | %.1f / %.1f | %.2f + %.2f | "
		       "%.3f / %.3f | %.3f / %.3f |\n",
		       procs[t].transport, x.echo_p50, x.echo_p99, x.sync_p50,
		       x.sync_p99, x.cpu_client, x.cpu_server, x.inside_p50,
		       x.inside_p99, x.handler_p50, x.handler_p99);
	}
}

[[noreturn]] void
usage(const char *why)
{
	fprintf(stderr,
	        "bench_grpc: %s\nusage: bench_grpc [--smoke] [--reps N] "
	        "[--json] [--transport unix|tcp]\n",
	        why);
	exit(2);
}

} // namespace

int
main(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--server") == 0) {
		return server_main(argv[2]);
	}
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--smoke") == 0) {
			smoke = true;
		} else if (strcmp(argv[i], "--json") == 0) {
			json = true;
		} else if (strcmp(argv[i], "--reps") == 0) {
			char *end = nullptr;
			if (i + 1 >= argc) {
				usage("--reps needs a number");
			}
			long n = strtol(argv[++i], &end, 10);
			if (*end != '\0' || n < 1 || n > 100) {
				usage("--reps: a number from 1 to 100");
			}
			reps = (int)n;
		} else if (strcmp(argv[i], "--transport") == 0) {
			if (i + 1 >= argc ||
			    (strcmp(argv[i + 1], "unix") != 0 &&
			     strcmp(argv[i + 1], "tcp") != 0)) {
				usage("--transport: unix or tcp");
			}
			only_transport = argv[++i];
		} else {
			usage("unknown argument");
		}
	}
	if (smoke) {
		reps = 1;
		warmup_calls = 50;
		echo_calls = 200;
		cancel_count = 40;
		cancel_batch = 20;
	}
	ssize_t n =
	    readlink("/proc/self/exe", self_path, sizeof(self_path) - 1);
	if (n <= 0) {
		die("readlink /proc/self/exe failed");
	}
	self_path[n] = '\0';
	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGHUP, on_signal);

	// Both servers start before this process makes any gRPC object.
	procs[0].transport = "unix";
	procs[1].transport = "tcp";
	bool ran[2] = {false, false};
	for (int t = 0; t < 2; t++) {
		if (only_transport == nullptr ||
		    strcmp(only_transport, procs[t].transport) == 0) {
			spawn_server(procs[t]);
			ran[t] = true;
		}
	}
	std::string load0 = load_average();
	uint64_t t0 = now_ns();
	Figures f[2];
	for (int t = 0; t < 2; t++) {
		if (ran[t]) {
			f[t] = measure(procs[t]);
		}
	}
	for (ServerProc &p : procs) {
		stop_server(p);
	}
	if (json) {
		print_json(f, ran);
	} else {
		print_tables(f, ran);
	}
	fflush(stdout);
	fprintf(stderr,
	        "bench_grpc: %.1f s, load average %s -> %s, %d functional "
	        "failure(s)\n",
	        (now_ns() - t0) / 1e9, load0.c_str(), load_average().c_str(),
	        failures);
	return failures == 0 ? 0 : 1;
}
