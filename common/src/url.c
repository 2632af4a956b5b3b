// url.c: the default address of the demo pair (aa/url.h).
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aai.h"

static char default_url[512];
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

// private_dir makes dir (mode 0700) or checks that it is ours and private.
static bool
private_dir(const char *dir)
{
	struct stat st;
	if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
		return false;
	}
	if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode) ||
	    st.st_uid != getuid()) {
		return false;
	}
	if ((st.st_mode & 077) != 0 && chmod(dir, 0700) != 0) {
		return false;
	}
	return true;
}

static void
make_default_url(void)
{
	char dir[400];
	const char *rt = getenv("XDG_RUNTIME_DIR");
	struct stat st;
	if (rt != NULL && rt[0] == '/' && stat(rt, &st) == 0 &&
	    S_ISDIR(st.st_mode)) {
		snprintf(dir, sizeof(dir), "%s/aaproxy", rt);
	} else {
		snprintf(dir, sizeof(dir), "/tmp/aaproxy-%u",
		         (unsigned)getuid());
	}
	if (private_dir(dir)) {
		snprintf(default_url, sizeof(default_url), "ipc://%s/aa.sock",
		         dir);
	}
}

const char *
aa_default_url(void)
{
	pthread_once(&default_once, make_default_url);
	return default_url[0] != '\0' ? default_url : NULL;
}
