// json_lex.c: the reading half of the JSON converter's tokens: white
// space, literals, strings with their escapes (\uXXXX and surrogate pairs
// to UTF-8), numbers in range (also inside strings, as protobuf's JSON
// mapping allows for 64-bit integers) and base64. json_parse.c builds
// messages from them.
//
// Design notes. Each function reads from a jparser (json.h), moves its
// position past what it consumed and, on bad input, writes "at byte N:
// why" into the caller's error buffer and returns AA_EINVAL. Bounds: every
// read is checked against the end of the text, a string's decoded form is
// never longer than its source (so one allocation of the source's length
// holds it), and a number token is at most NUM_MAX characters. No state
// beyond the jparser, no lock.
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

int
aai_json_fail(jparser *j, const char *fmt, ...)
{
	if (j->err != NULL && j->errlen > 0) {
		int n = snprintf(j->err, j->errlen,
		                 "at byte %zu: ", (size_t)(j->p - j->start));
		if (n >= 0 && (size_t)n < j->errlen) {
			va_list ap;
			va_start(ap, fmt);
			vsnprintf(j->err + n, j->errlen - (size_t)n, fmt, ap);
			va_end(ap);
		}
	}
	return AA_EINVAL;
}

void
aai_json_ws(jparser *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' ||
	                         *j->p == '\n' || *j->p == '\r')) {
		j->p++;
	}
}

bool
aai_json_eat(jparser *j, char c)
{
	aai_json_ws(j);
	if (j->p < j->end && *j->p == c) {
		j->p++;
		return true;
	}
	return false;
}

bool
aai_json_word(jparser *j, const char *w)
{
	size_t n = strlen(w);
	aai_json_ws(j);
	if ((size_t)(j->end - j->p) >= n && memcmp(j->p, w, n) == 0) {
		j->p += n;
		return true;
	}
	return false;
}

static int
hex4(jparser *j, unsigned *v)
{
	*v = 0;
	if (j->end - j->p < 4) {
		return aai_json_fail(j, "short \\u escape");
	}
	for (int i = 0; i < 4; i++) {
		char c = *j->p++;
		*v <<= 4;
		if (c >= '0' && c <= '9') {
			*v |= (unsigned)(c - '0');
		} else if (c >= 'a' && c <= 'f') {
			*v |= (unsigned)(c - 'a' + 10);
		} else if (c >= 'A' && c <= 'F') {
			*v |= (unsigned)(c - 'A' + 10);
		} else {
			return aai_json_fail(j, "bad \\u escape");
		}
	}
	return 0;
}

static size_t
utf8_put(char *o, unsigned cp)
{
	if (cp < 0x80) {
		o[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		o[0] = (char)(0xc0 | (cp >> 6));
		o[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		o[0] = (char)(0xe0 | (cp >> 12));
		o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		o[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	o[0] = (char)(0xf0 | (cp >> 18));
	o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
	o[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
	o[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

int
aai_json_string(jparser *j, char **out, size_t *lenp)
{
	if (!aai_json_eat(j, '"')) {
		return aai_json_fail(j, "expected a string");
	}
	// Decoded text is never longer than the source.
	const char *q = j->p;
	while (q < j->end && *q != '"') {
		q += (*q == '\\' && q + 1 < j->end) ? 2 : 1;
	}
	if (q >= j->end) {
		return aai_json_fail(j, "unterminated string");
	}
	char *o = malloc((size_t)(q - j->p) + 1);
	size_t n = 0;
	if (o == NULL) {
		return AA_ENOMEM;
	}
	while (*j->p != '"') {
		unsigned char c = (unsigned char)*j->p++;
		if (c < 0x20) {
			free(o);
			return aai_json_fail(j,
			                     "control character in a string");
		}
		if (c != '\\') {
			o[n++] = (char)c;
			continue;
		}
		c = (unsigned char)*j->p++;
		unsigned cp, lo;
		switch (c) {
		case '"':
		case '\\':
		case '/':
			o[n++] = (char)c;
			break;
		case 'b':
			o[n++] = '\b';
			break;
		case 'f':
			o[n++] = '\f';
			break;
		case 'n':
			o[n++] = '\n';
			break;
		case 'r':
			o[n++] = '\r';
			break;
		case 't':
			o[n++] = '\t';
			break;
		case 'u':
			if (hex4(j, &cp) != 0) {
				free(o);
				return AA_EINVAL;
			}
			if (cp >= 0xd800 && cp < 0xdc00) {
				// A surrogate pair: 12 source bytes, 4 out.
				if (j->end - j->p < 6 || j->p[0] != '\\' ||
				    j->p[1] != 'u') {
					free(o);
					return aai_json_fail(j,
					                     "lone surrogate");
				}
				j->p += 2;
				if (hex4(j, &lo) != 0 || lo < 0xdc00 ||
				    lo > 0xdfff) {
					free(o);
					return aai_json_fail(
					    j, "bad surrogate pair");
				}
				cp = 0x10000 + ((cp - 0xd800) << 10) +
				     (lo - 0xdc00);
			} else if (cp >= 0xdc00 && cp < 0xe000) {
				free(o);
				return aai_json_fail(j, "lone surrogate");
			}
			n += utf8_put(o + n, cp);
			break;
		default:
			free(o);
			return aai_json_fail(j, "bad escape \\%c", c);
		}
	}
	j->p++; // the closing quote
	o[n] = '\0';
	*out = o;
	*lenp = n;
	return 0;
}

// number_token copies a number literal, or the text of a string, into
// buf: protobuf's JSON mapping allows integers as strings.
static int
number_token(jparser *j, char *buf, size_t cap)
{
	aai_json_ws(j);
	if (j->p < j->end && *j->p == '"') {
		char *s;
		size_t n;
		int rv = aai_json_string(j, &s, &n);
		if (rv != 0) {
			return rv;
		}
		if (n == 0 || n >= cap || strlen(s) != n) {
			free(s);
			return aai_json_fail(j, "not a number");
		}
		memcpy(buf, s, n + 1);
		free(s);
		return 0;
	}
	size_t n = 0;
	while (j->p < j->end && strchr("+-0123456789.eE", *j->p) != NULL &&
	       n + 1 < cap) {
		buf[n++] = *j->p++;
	}
	buf[n] = '\0';
	if (n == 0) {
		return aai_json_fail(j, "expected a number");
	}
	return 0;
}

int
aai_json_int(jparser *j, int64_t lo, int64_t hi, int64_t *v)
{
	char b[NUM_MAX];
	char *e;
	int rv = number_token(j, b, sizeof(b));
	if (rv != 0) {
		return rv;
	}
	errno = 0;
	long long x = strtoll(b, &e, 10);
	if (*e != '\0' || errno != 0 || x < lo || x > hi) {
		return aai_json_fail(j, "\"%s\" is not an integer in range",
		                     b);
	}
	*v = x;
	return 0;
}

int
aai_json_uint(jparser *j, uint64_t hi, uint64_t *v)
{
	char b[NUM_MAX];
	char *e;
	int rv = number_token(j, b, sizeof(b));
	if (rv != 0) {
		return rv;
	}
	errno = 0;
	unsigned long long x = strtoull(b, &e, 10);
	if (*e != '\0' || errno != 0 || b[0] == '-' || x > hi) {
		return aai_json_fail(
		    j, "\"%s\" is not an unsigned integer in range", b);
	}
	*v = x;
	return 0;
}

int
aai_json_float(jparser *j, double *v)
{
	char b[NUM_MAX];
	char *e;
	if (aai_json_word(j, "\"NaN\"")) {
		*v = NAN;
		return 0;
	}
	if (aai_json_word(j, "\"Infinity\"")) {
		*v = INFINITY;
		return 0;
	}
	if (aai_json_word(j, "\"-Infinity\"")) {
		*v = -INFINITY;
		return 0;
	}
	int rv = number_token(j, b, sizeof(b));
	if (rv != 0) {
		return rv;
	}
	errno = 0;
	*v = strtod(b, &e);
	if (*e != '\0' || errno == ERANGE) {
		return aai_json_fail(j, "\"%s\" is not a number", b);
	}
	return 0;
}

// ---- base64 ----

static int
b64_digit(char c)
{
	if (c >= 'A' && c <= 'Z') {
		return c - 'A';
	}
	if (c >= 'a' && c <= 'z') {
		return c - 'a' + 26;
	}
	if (c >= '0' && c <= '9') {
		return c - '0' + 52;
	}
	if (c == '+' || c == '-') {
		return 62;
	}
	if (c == '/' || c == '_') {
		return 63;
	}
	return -1;
}

bool
aai_json_b64_decode(char *s, size_t n, size_t *outn)
{
	unsigned acc = 0;
	int bits = 0;
	size_t o = 0;
	while (n > 0 && s[n - 1] == '=') {
		n--;
	}
	for (size_t i = 0; i < n; i++) {
		int d = b64_digit(s[i]);
		if (d < 0) {
			return false;
		}
		acc = (acc << 6) | (unsigned)d;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			s[o++] = (char)((acc >> bits) & 0xff);
		}
	}
	*outn = o;
	return true;
}
