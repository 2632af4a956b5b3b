// aa/aa.h: the umbrella header of aaproxy.
#ifndef AA_AA_H
#define AA_AA_H

#include <aa/alloc.h>
#include <aa/cancel.h>
#include <aa/checkpoint.h>
#include <aa/errors.h>
#include <aa/executor.h>
#include <aa/op.h>

#endif // AA_AA_H
