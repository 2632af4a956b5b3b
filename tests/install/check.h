// check.h: the one-line assertion of the install checks (and of the test
// peers): prints "ok" or "FAIL" and what was checked, and counts failures.
#ifndef AA_INSTALL_CHECK_H
#define AA_INSTALL_CHECK_H

#include <stdio.h>

static int failures;

static void
check(int ok, const char *what)
{
	printf("%s: %s\n", ok ? "ok  " : "FAIL", what);
	if (!ok) {
		failures++;
	}
}

#endif // AA_INSTALL_CHECK_H
