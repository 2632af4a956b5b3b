// aa/url.h: the default address of the demo pair.
#ifndef AA_URL_H
#define AA_URL_H

#ifdef __cplusplus
extern "C" {
#endif

// aa_default_url returns the address a client and a server meet on when
// none is given: ipc://<dir>/aa.sock, where <dir> is $XDG_RUNTIME_DIR/aaproxy
// when that runtime directory exists, else /tmp/aaproxy-<uid>. The
// directory is created with mode 0700 and must belong to the caller; NULL
// when it cannot be made safe. The string is static.
const char *aa_default_url(void);

#ifdef __cplusplus
}
#endif
#endif // AA_URL_H
