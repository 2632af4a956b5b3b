// aa/aa.h: the umbrella header of aaproxy: the core (aa::common) and,
// when their headers are on the include path, the client (aa::client) and
// server (aa::server) layers. An installed aaproxy has all of them.
#ifndef AA_AA_H
#define AA_AA_H

#include <aa/alloc.h>
#include <aa/cancel.h>
#include <aa/checkpoint.h>
#include <aa/errors.h>
#include <aa/executor.h>
#include <aa/op.h>
#include <aa/timer.h>
#include <aa/url.h>

#if defined(__has_include)
#if __has_include(<aa/client.h>)
#include <aa/client.h>
#endif
#if __has_include(<aa/server.h>)
#include <aa/server.h>
#endif
#endif

#endif // AA_AA_H
