// fuzz_wire.c: a libFuzzer target for the wire decoder. Every input must
// decode or fail with AA_EPROTO / AA_EMSGSIZE, never crash, hang or leak;
// whatever decodes must re-encode, and decoding that encoding must give
// the same bytes again (encode(decode(x)) is a fixed point). The fast
// path (wire_fast.c) and the protobuf-c path must agree on every input:
// the same verdict and reason, the same re-encoding.
//
// Build: cmake -DAA_FUZZ=ON -DCMAKE_C_COMPILER=clang ...; then run
//   ./tests/fuzz/fuzz_wire -max_len=4096 corpus/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"
#include "wire_impl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t arena_buf[2048]; // small: spills get fuzzed too
	static uint8_t out1[1 << 16];
	static uint8_t out2[1 << 16];
	static aai_wire_arena a1;
	aai_wire_arena a2;
	uint8_t buf2[512];
	aai_wire_msg m, m2;
	const char *why = NULL;
	size_t n1, n2;

	static uint8_t arena3[2048], out3[1 << 16];
	aai_wire_arena a3;
	aai_wire_msg m3;
	const char *why3 = NULL;
	size_t n3 = 0;
	aai_wire_arena_init(&a3, arena3, sizeof(arena3));
	aai_wire_fast_off = true;
	int rv3 = aai_wire_decode(&m3, &why3, &a3, data, size, 1 << 16);
	if (rv3 == 0 &&
	    aai_wire_encode(&n3, out3, sizeof(out3), &m3, 0) != 0) {
		abort();
	}
	aai_wire_fast_off = false;

	aai_wire_arena_init(&a1, arena_buf, sizeof(arena_buf));
	int rv = aai_wire_decode(&m, &why, &a1, data, size, 1 << 16);
	if (rv != rv3 || (rv != 0 && strcmp(why, why3) != 0)) {
		fprintf(stderr,
		        "fast path and protobuf-c disagree: %d %s / %d %s\n",
		        rv, why ? why : "", rv3, why3 ? why3 : "");
		abort();
	}
	if (rv != 0) {
		if ((rv != AA_EPROTO && rv != AA_EMSGSIZE) || why == NULL ||
		    m.kind != AAI_WIRE_NONE) {
			abort();
		}
		aai_wire_arena_fini(&a1);
		aai_wire_arena_fini(&a3);
		return 0;
	}
	if (aai_wire_check(NULL, &m) != 0 ||
	    aai_wire_encode(&n1, out1, sizeof(out1), &m, 0) != 0 || n1 != n3 ||
	    memcmp(out1, out3, n1) != 0) {
		abort();
	}
	aai_wire_arena_fini(&a3);
	aai_wire_arena_init(&a2, buf2, sizeof(buf2));
	if (aai_wire_decode(&m2, &why, &a2, out1, n1, 0) != 0 ||
	    m2.kind != m.kind || m2.op_id != m.op_id ||
	    aai_wire_encode(&n2, out2, sizeof(out2), &m2, 0) != 0 ||
	    n1 != n2 || memcmp(out1, out2, n1) != 0) {
		fprintf(stderr, "re-encoding is not a fixed point\n");
		abort();
	}
	aai_wire_arena_fini(&a2);
	aai_wire_arena_fini(&a1);
	return 0;
}
