// replay.h: aa-replay, the deterministic race replay tool (docs/replay.md).
// A scenario file is parsed into units of steps (parse.c); a run executes
// them against the real client and server layers, holding their threads at
// checkpoints (run.c); the events it observed print as the four-column
// table (table.c); exploration runs many interleavings of a scenario's par
// blocks, checks the invariants and shrinks a failing one (explore.c).
#ifndef AA_REPLAY_H
#define AA_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <aa/aa.h>

#define RP_NAME 32
#define RP_TEXT 192

// Exit statuses of the tool.
enum { RP_PASS = 0, RP_FAIL = 1, RP_BAD = 2 };

typedef enum rp_kind {
	K_HOLD,
	K_RELEASE,
	K_WAIT,
	K_CALL,
	K_CANCEL,
	K_CANCEL_ALL,
	K_CORK,
	K_UNCORK,
	K_SIGNAL,
	K_EMIT,
	K_SRV_COMPLETE,
	K_SRV_FAIL,
	K_SRV_PROGRESS,
	K_SRV_IGNORE,
	K_SRV_STOP,
	K_SRV_KILL,
	K_EXPECT,
} rp_kind;

// What a wait step waits for.
typedef enum rp_wait {
	W_REACHED,  // a hold was reached
	W_HANDLER,  // the op's completion handler ran
	W_SETTLED,  // its settle handler ran
	W_PROGRESS, // its progress handler ran
	W_SERVER,   // the server logged an event for it
	W_IDLE,     // every action of the scenario has returned
} rp_wait;

// What an expect step checks.
typedef enum rp_expect {
	E_STATUS,
	E_ERROR,
	E_TIMELINE,
	E_SETTLEMENT,
	E_HANDLER,
	E_RESULT,
	E_PROGRESS,
	E_CANCEL_RV,
	E_INSIDE_RV,
	E_APP_CODE,
	E_SERVER_LOG,
	E_WIRE,
	E_COUNTER,
} rp_expect;

typedef struct rp_step {
	rp_kind kind;
	int line, col;      // where it starts in its file
	char text[RP_TEXT]; // the step as written (normalised spacing)
	char op[RP_NAME];   // op or signal name ("" = any, for holds)
	char what[RP_NAME]; // checkpoint, method, event, counter
	char data[RP_TEXT]; // payload, message, expected value
	int num;            // code, deadline, count
	aa_cancel_type ctype;
	rp_wait wait;
	rp_expect expect;
	char parent[RP_NAME]; // call: a signal's name
	bool cancel_in_handler;
} rp_step;

// A unit: steps that run as one, in order. Outside par blocks each step
// is its own unit (thread -1); inside, a unit is one line of one thread.
typedef struct rp_unit {
	int first, n; // steps[first .. first + n)
	int block;    // par block index, or -1
	int thread;   // thread index in its block, or -1
	char tname[RP_NAME];
} rp_unit;

typedef struct rp_scenario {
	char file[256];
	char transport[16]; // "inproc" or "ipc"
	int timeout_ms;     // per step
	int heartbeat_ms;   // the client's heartbeat interval; 0: default
	rp_step *steps;
	int n_steps;
	rp_unit *units;
	int n_units;
	int n_blocks;
} rp_scenario;

// rp_parse reads a scenario; on an error it prints "file:line:col: msg"
// to err and returns RP_BAD.
int rp_parse(rp_scenario *sc, const char *file, FILE *err);
void rp_scenario_free(rp_scenario *sc);

// rp_grow makes room in *arr (*cap elements of elem bytes) for element n:
// 0, or -1 without memory.
int rp_grow(void **arr, int *cap, int n, size_t elem);

// ---- A run ----

enum { COL_CLIENT, COL_CLAYER, COL_SLAYER, COL_SERVER, N_COLS };

typedef struct rp_event {
	int col;
	char text[RP_TEXT];
} rp_event;

typedef struct rp_check {
	int line; // 0 for an invariant
	char what[RP_TEXT];
	char observed[RP_TEXT];
	bool pass;
} rp_check;

typedef struct rp_result {
	rp_event *events;
	int n_events, cap_events;
	rp_check *checks;
	int n_checks, cap_checks;
	bool setup_error; // a step failed or timed out
	char error[2 * RP_TEXT];
	bool invariant_failed;
	bool expect_failed;
} rp_result;

// rp_run runs the scenario's units in order (n_order unit indices; NULL:
// every unit as written). Returns RP_PASS, RP_FAIL or RP_BAD.
int rp_run(const rp_scenario *sc, const int *order, int n_order,
           rp_result *res);
void rp_result_free(rp_result *res);

// Output (table.c).
typedef enum rp_format { F_MARKDOWN, F_MERMAID, F_JSON } rp_format;
void rp_print(FILE *f, const rp_scenario *sc, const rp_result *res,
              rp_format fmt, int status);
// rp_json_str writes s as a JSON string, quoted and escaped.
void rp_json_str(FILE *f, const char *s);

// Exploration (explore.c).
typedef enum rp_strategy { ST_RANDOM, ST_PCT } rp_strategy;
typedef struct rp_explore_opts {
	long runs;
	uint64_t seed;
	rp_strategy strategy;
	int depth;       // PCT: bug depth d (d - 1 priority change points)
	const char *out; // where to write a failing interleaving
	rp_format fmt;
	bool shrink;
} rp_explore_opts;
int rp_explore(const rp_scenario *sc, const rp_explore_opts *o);

// rp_write writes sc with its units in order as a plain scenario (no par
// block, expectations left out), with a header comment.
int rp_write(const char *path, const rp_scenario *sc, const int *order,
             int n_order, const char *header);

#endif // AA_REPLAY_H
