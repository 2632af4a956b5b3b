// json.h: what the three files of the JSON converter share (json_lex.c
// reads JSON tokens, json_parse.c builds messages from them, json_emit.c
// writes messages as JSON). Internal to the service layer.
#ifndef AA_SVC_JSON_H
#define AA_SVC_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "svc.h"

#define DEPTH_MAX 64 // nesting of objects and arrays accepted
#define NUM_MAX   64 // characters in a number token

// The reader's position in one JSON text, and where errors are written.
typedef struct jparser {
	const char *start;
	const char *p;
	const char *end;
	char *err;
	size_t errlen;
	int depth;
} jparser;

// aai_json_fail writes "at byte N: " and the message into j's error
// buffer; returns AA_EINVAL.
int aai_json_fail(jparser *j, const char *fmt, ...);

// aai_json_ws skips white space.
void aai_json_ws(jparser *j);

// aai_json_eat consumes c (after white space) if it comes next.
bool aai_json_eat(jparser *j, char c);

// aai_json_word consumes the literal w (after white space) if it comes
// next.
bool aai_json_word(jparser *j, const char *w);

// aai_json_string parses a JSON string into a new NUL-terminated buffer
// (malloc'd; *lenp: its length; it may hold NUL bytes from \u0000).
int aai_json_string(jparser *j, char **out, size_t *lenp);

// aai_json_int, aai_json_uint and aai_json_float parse a number (or, as
// protobuf's JSON mapping allows, a number in a string) in range.
int aai_json_int(jparser *j, int64_t lo, int64_t hi, int64_t *v);
int aai_json_uint(jparser *j, uint64_t hi, uint64_t *v);
int aai_json_float(jparser *j, double *v);

// aai_json_b64_decode decodes s[0..n) in place (standard or URL-safe
// alphabet, padding optional); the new length in *outn.
bool aai_json_b64_decode(char *s, size_t n, size_t *outn);

// aai_json_value_size is the size of one value of type t in a message
// (one element of a repeated field's array).
size_t aai_json_value_size(ProtobufCType t);

#endif // AA_SVC_JSON_H
