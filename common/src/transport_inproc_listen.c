// transport_inproc_listen.c: the in-process transport's listeners: the
// registry of names, dial and listen, and the kill hook for tests
// (transport_inproc.c has the pipes and their owner threads).
//
// Design notes.
// * Registry: a global list of listeners by name under
//   aai_inproc_registry_mtx. Dial looks the name up, marks the listener
//   busy, builds a pipe and two connections, calls the accept callback on
//   the dialing thread with no lock held, then unmarks it; listener free
//   waits for busy == 0.
// * Test hook aai_inproc_kill(name) (inproc_hooks.h) makes a listener
//   vanish as a killed process's would: unregistered (a dial gets
//   AA_ECONNREF), and the accepted side of every pipe made through it
//   closed at once, with no Goodbye and no reason recorded, so both ends
//   end with AA_ECONNLOST (the dialer's after it took what was already
//   queued to it, as a socket's reader does). The listener lists its live
//   pipes for this (l->pipes, p->l, p->next/prev, under the registry's
//   mutex). Lock order: the registry's mutex, then p->mtx. A pipe's last
//   release unlinks it under the registry's mutex before freeing it, so a
//   kill that walks the list never sees a freed pipe; a listener's free
//   detaches its pipes (p->l = NULL) the same way.
#include <string.h>

#include "inproc_hooks.h"
#include "transport_inproc.h"

pthread_mutex_t aai_inproc_registry_mtx = PTHREAD_MUTEX_INITIALIZER;
ilistener *aai_inproc_registry;

// aai_inproc_pipe_unlink: transport_inproc.h.
void
aai_inproc_pipe_unlink(ipipe *p)
{
	if (p->l == NULL) {
		return;
	}
	if (p->prev != NULL) {
		p->prev->next = p->next;
	} else {
		p->l->pipes = p->next;
	}
	if (p->next != NULL) {
		p->next->prev = p->prev;
	}
	p->l = NULL;
	p->next = p->prev = NULL;
}

// ---- dial and listen ----

int
aai_inproc_dial(aai_conn **cp, const char *name, const aai_tp_opts *o)
{
	ilistener *l;
	aai_mtx_lock(&aai_inproc_registry_mtx);
	for (l = aai_inproc_registry; l != NULL; l = l->next) {
		if (strcmp(l->name, name) == 0) {
			break;
		}
	}
	if (l == NULL) {
		aai_mtx_unlock(&aai_inproc_registry_mtx);
		return AA_ECONNREF;
	}
	l->busy++;
	aai_mtx_unlock(&aai_inproc_registry_mtx);

	int rv = AA_ENOMEM;
	iconn *cli = NULL, *srv = NULL;
	ipipe *p = aai_zalloc(sizeof(*p));
	if (p != NULL) {
		aai_mtx_init(&p->mtx);
		aai_cv_init(&p->side[0].cv);
		aai_cv_init(&p->side[1].cv);
		p->refs = 2;
		if ((cli = aai_inproc_conn_alloc(p, 0, o)) != NULL &&
		    (srv = aai_inproc_conn_alloc(p, 1, &l->opts)) != NULL) {
			rv = 0;
		}
	}
	if (rv != 0 && p != NULL) {
		if (cli != NULL) {
			cli->base.ops->teardown(&cli->base,
			                        false); // drops one ref
		} else {
			aai_inproc_pipe_release(p);
		}
		aai_inproc_pipe_release(p);
	}
	if (rv == 0) {
		aai_mtx_lock(&aai_inproc_registry_mtx);
		p->l = l; // l is busy: not freed under us
		p->next = l->pipes;
		if (l->pipes != NULL) {
			l->pipes->prev = p;
		}
		l->pipes = p;
		aai_mtx_unlock(&aai_inproc_registry_mtx);
		l->accept(l->arg, &srv->base);
		*cp = &cli->base;
	}

	aai_mtx_lock(&aai_inproc_registry_mtx);
	if (--l->busy == 0) {
		aai_cv_broadcast(&l->cv);
	}
	aai_mtx_unlock(&aai_inproc_registry_mtx);
	return rv;
}

static int
ilistener_port(aai_listener *l)
{
	return 0;
}

static void
ilistener_close(aai_listener *al)
{
	ilistener *l = (ilistener *)al;
	aai_mtx_lock(&aai_inproc_registry_mtx);
	if (l->registered) {
		ilistener **pp = &aai_inproc_registry;
		while (*pp != l) {
			pp = &(*pp)->next;
		}
		*pp = l->next;
		l->registered = false;
	}
	aai_mtx_unlock(&aai_inproc_registry_mtx);
}

static void
ilistener_free(aai_listener *al)
{
	ilistener *l = (ilistener *)al;
	ilistener_close(al);
	aai_mtx_lock(&aai_inproc_registry_mtx);
	while (l->busy > 0) {
		aai_cv_wait(&l->cv, &aai_inproc_registry_mtx);
	}
	while (l->pipes != NULL) {
		aai_inproc_pipe_unlink(l->pipes); // they outlive it
	}
	aai_mtx_unlock(&aai_inproc_registry_mtx);
	aai_cv_fini(&l->cv);
	aai_free(l->hb_frame);
	aai_free(l->name);
	aai_free(l);
	aai_live_dec(AA_LIVE_OTHER);
}

static const aai_listener_ops ilistener_ops = {
    .port = ilistener_port,
    .close = ilistener_close,
    .free = ilistener_free,
};

int
aai_inproc_listen(aai_listener **lp, const char *name, const aai_tp_opts *o,
                  void (*accept)(void *, aai_conn *), void *arg)
{
	ilistener *l = aai_zalloc(sizeof(*l));
	if (l == NULL) {
		return AA_ENOMEM;
	}
	l->base.ops = &ilistener_ops;
	l->accept = accept;
	l->arg = arg;
	l->opts = *o;
	l->opts.tls_cert_file = l->opts.tls_key_file = NULL;
	l->opts.tls_ca_file = l->opts.tls_server_name = NULL;
	if ((l->name = aai_strdup(name)) == NULL) {
		aai_free(l);
		return AA_ENOMEM;
	}
	if (o->heartbeat_len > 0) {
		if ((l->hb_frame = aai_alloc(o->heartbeat_len)) == NULL) {
			aai_free(l->name);
			aai_free(l);
			return AA_ENOMEM;
		}
		memcpy(l->hb_frame, o->heartbeat_frame, o->heartbeat_len);
		l->opts.heartbeat_frame = l->hb_frame;
	}
	aai_cv_init(&l->cv);
	aai_mtx_lock(&aai_inproc_registry_mtx);
	for (ilistener *x = aai_inproc_registry; x != NULL; x = x->next) {
		if (strcmp(x->name, name) == 0) {
			aai_mtx_unlock(&aai_inproc_registry_mtx);
			aai_cv_fini(&l->cv);
			aai_free(l->hb_frame);
			aai_free(l->name);
			aai_free(l);
			return AA_EBUSY;
		}
	}
	l->next = aai_inproc_registry;
	aai_inproc_registry = l;
	l->registered = true;
	aai_mtx_unlock(&aai_inproc_registry_mtx);
	aai_live_inc(AA_LIVE_OTHER);
	*lp = &l->base;
	return 0;
}

// ---- test hook (inproc_hooks.h) ----

int
aai_inproc_kill(const char *name)
{
	aai_mtx_lock(&aai_inproc_registry_mtx);
	ilistener *l;
	for (l = aai_inproc_registry; l != NULL; l = l->next) {
		if (strcmp(l->name, name) == 0) {
			break;
		}
	}
	if (l == NULL) {
		aai_mtx_unlock(&aai_inproc_registry_mtx);
		return AA_ENOENT;
	}
	// Unregistered in the same step: no dial finds it any more.
	ilistener **pp = &aai_inproc_registry;
	while (*pp != l) {
		pp = &(*pp)->next;
	}
	*pp = l->next;
	l->registered = false;
	for (ipipe *p = l->pipes; p != NULL; p = p->next) {
		// The accepted side closes as iconn_abort would, but with no
		// reason recorded: its owner ends with AA_ECONNLOST, the
		// dialer's once it took what was queued to it.
		aai_mtx_lock(&p->mtx);
		p->side[1].closed = true;
		atomic_fetch_add(&p->side[0].kicks, 1);
		atomic_fetch_add(&p->side[1].kicks, 1);
		aai_cv_broadcast(&p->side[0].cv);
		aai_cv_broadcast(&p->side[1].cv);
		aai_mtx_unlock(&p->mtx);
	}
	aai_mtx_unlock(&aai_inproc_registry_mtx);
	return 0;
}
