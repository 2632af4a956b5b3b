// run.h: what run.c (a run: the driver, the recording, setup and
// teardown), check.c (expectations and invariants), layers.c (what the
// layers meet) and remote.c (the server in a second process) share.
// Internal to aa-replay.
#ifndef AA_REPLAY_RUN_H
#define AA_REPLAY_RUN_H

#include <pthread.h>
#include <sys/types.h>
#include <time.h>

#include "replay.h"

#define MAX_OPS   64
#define MAX_HOLDS 32
#define MAX_SIGS  8
#define N_ACTORS  6

typedef struct opent {
	char name[RP_NAME];
	aa_op *op;   // the client op (our reference once the call returned)
	aa_op *real; // the server's real op (our reference)
	bool handlers_set;
	bool ignore_cancel;
	bool cancel_in_handler;
	bool cancelled_ok; // one of the user's cancels returned 0
	int call_rv;
	int handler_runs;
	aa_state handler_saw;
	int settles;
	int progress;
	int cancel_rv;
	int inside_rv;
	uint64_t wire_id;   // its id on the wire, once known
	char slog[RP_TEXT]; // the server's log events for it, comma-joined
	unsigned slog_mask; // 1 << aa_server_event
} opent;

typedef struct hold {
	char cp[RP_NAME];
	char op[RP_NAME];
	bool armed, reached, released;
} hold;

typedef struct sigent {
	char name[RP_NAME];
	aa_cancel_signal *sig;
} sigent;

typedef struct actor {
	pthread_t t;
	bool busy; // a step is handed over and has not returned
	bool held; // its thread waits at a hold
	const rp_step *st;
} actor;

struct run_state {
	pthread_mutex_t mtx;
	pthread_cond_t cv;
	const rp_scenario *sc;
	rp_result *res;
	bool recording;
	bool aborting;
	opent ops[MAX_OPS];
	int n_ops;
	hold holds[MAX_HOLDS];
	int n_holds;
	sigent sigs[MAX_SIGS];
	int n_sigs;
	actor actors[N_ACTORS];
	aa_server *srv;
	aa_client *cli;
	aa_executor *pool; // where the real ops' handlers run
	char url[160];
	// The server in a second process (remote.c): in the tool, the
	// child's pid (0: the server runs here); in that child, child.
	pid_t server_pid;
	bool child;
	bool server_dead; // killed by the scenario
};

extern struct run_state R;

// In run.c (R.mtx held unless said otherwise).
int ev_add(int col, const char *fmt, ...);
void ev_insert(int at, int col, const char *fmt, ...);
void ev_append(int at, const char *fmt, ...);
const char *err_name(int e, char *buf, size_t n); // any lock
const char *ctype_name(aa_cancel_type t);         // any lock
opent *op_by_ptr(const void *op, bool real);
opent *op_by_wire(uint64_t id);
const char *nm(const opent *e);
void setup_error(const rp_step *st, const char *fmt, ...);
void add_check(int line, const char *what, const char *observed, bool pass);
opent *op_find(const char *name);
opent *op_get(const char *name);
hold *hold_arm(const char *cp, const char *op);
hold *hold_find(const char *cp, const char *op, bool armed);
void deadline_after(struct timespec *ts, int ms);
bool timed_wait(const struct timespec *ts);
void dispatch(const rp_step *st);
extern pthread_once_t once;
void start_once(void);          // the actors and the lock, once
void actors_idle_or_exit(void); // R.mtx not held

// In check.c (R.mtx held).
void do_expect(const rp_step *st);
void check_invariants(void);

// In layers.c (R.mtx held unless said otherwise).
void server_log_event(aa_server_event ev, opent *e);
void *actor_main(void *arg);
opent *need_op(const rp_step *st, bool real);
aa_cancel_signal *find_sig(const char *name);
void on_checkpoint(void *arg, const char *name, void *subject); // any
bool needs_pool(const rp_scenario *sc);                         // any
int server_up(const char *url, bool pool); // R.mtx not held
void server_down(void);                    // R.mtx not held

// In remote.c. The tool's side (R.mtx held unless said otherwise):
int remote_start(const rp_scenario *sc); // spawns the server; not held
void remote_name(const opent *e);
void remote_step(const rp_step *st);
bool remote_stats(aa_server_stats *ss); // R.mtx not held
void remote_stop(void);                 // R.mtx not held
// The child's side:
void remote_row(int col, const char *text);
void remote_event(const char *fmt, ...);
int rp_serve(const char *url, bool pool, int timeout_ms);

#endif // AA_REPLAY_RUN_H
