// fuzz_wire.c: a libFuzzer target for the wire decoder. Every input must
// decode or fail with AA_EPROTO / AA_EMSGSIZE, never crash, hang or leak;
// whatever decodes must re-encode, and decoding that encoding must give
// the same bytes again (encode(decode(x)) is a fixed point).
//
// Build: cmake -DAA_FUZZ=ON -DCMAKE_C_COMPILER=clang ...; then run
//   ./tests/fuzz/fuzz_wire -max_len=4096 corpus/
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire.h"

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

	aai_wire_arena_init(&a1, arena_buf, sizeof(arena_buf));
	int rv = aai_wire_decode(&m, &why, &a1, data, size, 1 << 16);
	if (rv != 0) {
		if ((rv != AA_EPROTO && rv != AA_EMSGSIZE) || why == NULL ||
		    m.kind != AAI_WIRE_NONE) {
			abort();
		}
		aai_wire_arena_fini(&a1);
		return 0;
	}
	if (aai_wire_check(NULL, &m) != 0 ||
	    aai_wire_encode(&n1, out1, sizeof(out1), &m, 0) != 0) {
		abort();
	}
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
