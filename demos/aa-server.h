// aa-server.h: what the parts of aa-server share (demos/aa-server.c: the
// command line, the listeners and main; aa-server-log.c: the JSON event
// log; aa-server-methods.c: the byte methods; aa-server-typed.c: the typed
// service aa.demo.Demo). Nothing here is a library API: the demo uses the
// library only through its public headers, as an outside user would.
#ifndef AA_DEMO_SERVER_H
#define AA_DEMO_SERVER_H

#include <aa/aa.h>
#include <aa/service.h>

#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>

#define TEXT_MAX 32 // a number as text (an argument or a result)

// What the methods need from main: where timed work and spin work run,
// the log, and whether the server is shutting down.
typedef struct server_ctx {
	aa_timer_queue *timers;
	aa_executor *pool;
	FILE *log;
	atomic_bool stopping;
} server_ctx;

extern server_ctx G;

// log_line_app writes one JSON object per line to G.log, whole, and
// flushes it (docs/demo.md, "The server's log": a contract). app_code is
// written only with error AA_EAPP.
void log_line_app(uint64_t op_id, uint64_t conn_id, const char *method,
                  const char *event, uint64_t t_us, int error,
                  int32_t app_code, const char *detail);

// log_line is log_line_app without an application code.
void log_line(uint64_t op_id, uint64_t conn_id, const char *method,
              const char *event, uint64_t t_us, int error, const char *detail);

// on_server_event is the server's log callback: one line per event.
void on_server_event(void *arg, const aa_server_log_rec *rec);

// The byte methods (docs/demo.md, "Methods"), each an aa_method_fn.
int m_echo(aa_op **opp, void *arg, const aa_call_info *call,
           const void *payload, size_t len, const aa_assoc *assoc);
int m_sleep(aa_op **opp, void *arg, const aa_call_info *call,
            const void *payload, size_t len, const aa_assoc *assoc);
int m_count(aa_op **opp, void *arg, const aa_call_info *call,
            const void *payload, size_t len, const aa_assoc *assoc);
int m_spin(aa_op **opp, void *arg, const aa_call_info *call,
           const void *payload, size_t len, const aa_assoc *assoc);
int m_fail(aa_op **opp, void *arg, const aa_call_info *call,
           const void *payload, size_t len, const aa_assoc *assoc);

// spin_compensate is spin's compensation hook: it logs compensate_hook.
void spin_compensate(void *arg, const aa_call_info *call, aa_op *op);

// register_demo_service registers aa.demo.Demo on srv.
int register_demo_service(aa_service **svp, aa_server *srv);

#endif // AA_DEMO_SERVER_H
