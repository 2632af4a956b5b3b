// A Criterion-compatible test runner for the ThreadSanitizer build only.
//
// Criterion 2.4 cannot start under ThreadSanitizer: its BoxFort sandbox
// maps an "inheritable arena" at addresses TSan reserves for itself
// ("Could not initialize inheritable arena", upstream Criterion issue
// #274, still open). So in the TSan build the very same suite sources are
// compiled against this header instead, which implements the part of
// Criterion's API the suites use: Test, TestSuite (.init, .fini,
// .timeout, .disabled), the cr_assert family and cr_log_info. Like
// Criterion, it runs each test in its own forked process with a timeout
// and prints Criterion's closing line. Everywhere else the real Criterion
// runs the suites.
#ifndef AA_TSAN_SHIM_CRITERION_H
#define AA_TSAN_SHIM_CRITERION_H

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

struct crs_params {
	int dummy_;
	void (*init)(void);
	void (*fini)(void);
	double timeout;
	bool disabled;
};

struct crs_test {
	const char *suite;
	const char *name;
	void (*fn)(void);
	struct crs_params params;
	struct crs_test *next;
};

struct crs_suite {
	const char *name;
	struct crs_params params;
	struct crs_suite *next;
};

void crs_register_test(struct crs_test *t);
void crs_register_suite(struct crs_suite *s);
_Noreturn void crs_fail(const char *file, int line, const char *expr,
                        const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void crs_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#define Test(suite, name, ...)                                                \
	static void suite##_##name##_fn(void);                                \
	static struct crs_test suite##_##name##_desc = {                      \
	    #suite,                                                           \
	    #name,                                                            \
	    suite##_##name##_fn,                                              \
	    {.dummy_ = 0, __VA_ARGS__},                                       \
	    NULL};                                                            \
	__attribute__((constructor)) static void suite##_##name##_reg(void)   \
	{                                                                     \
		crs_register_test(&suite##_##name##_desc);                    \
	}                                                                     \
	static void suite##_##name##_fn(void)

#define TestSuite(suite, ...)                                                 \
	static struct crs_suite suite##_suite_desc = {                        \
	    #suite, {.dummy_ = 0, __VA_ARGS__}, NULL};                        \
	__attribute__((constructor)) static void suite##_suite_reg(void)      \
	{                                                                     \
		crs_register_suite(&suite##_suite_desc);                      \
	}

#define cr_assert(cond, ...)                                                  \
	do {                                                                  \
		if (!(cond)) {                                                \
			crs_fail(__FILE__, __LINE__, #cond, " " __VA_ARGS__); \
		}                                                             \
	} while (0)

#define cr_assert_not(cond, ...)   cr_assert(!(cond), __VA_ARGS__)
#define cr_assert_eq(a, b, ...)    cr_assert((a) == (b), __VA_ARGS__)
#define cr_assert_neq(a, b, ...)   cr_assert((a) != (b), __VA_ARGS__)
#define cr_assert_lt(a, b, ...)    cr_assert((a) < (b), __VA_ARGS__)
#define cr_assert_leq(a, b, ...)   cr_assert((a) <= (b), __VA_ARGS__)
#define cr_assert_gt(a, b, ...)    cr_assert((a) > (b), __VA_ARGS__)
#define cr_assert_geq(a, b, ...)   cr_assert((a) >= (b), __VA_ARGS__)
#define cr_assert_null(p, ...)     cr_assert((p) == NULL, __VA_ARGS__)
#define cr_assert_not_null(p, ...) cr_assert((p) != NULL, __VA_ARGS__)
#define cr_assert_str_eq(a, b, ...)                                           \
	cr_assert(strcmp((a), (b)) == 0, __VA_ARGS__)
#define cr_assert_str_neq(a, b, ...)                                          \
	cr_assert(strcmp((a), (b)) != 0, __VA_ARGS__)
#define cr_assert_fail(...)                                                   \
	crs_fail(__FILE__, __LINE__, "fail", " " __VA_ARGS__)
#define cr_log_info(...) crs_log(__VA_ARGS__)

#endif // AA_TSAN_SHIM_CRITERION_H
