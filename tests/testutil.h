/* testutil: helpers shared by the cmocka unit tests (a temporary directory per test). */
#ifndef PC_TESTUTIL_H
#define PC_TESTUTIL_H

#include <stdio.h>
#include <stdlib.h>

/* Create /tmp/pc-test-<tag>-XXXXXX into dir (size n); 0 on success. */
static inline int test_mkdtemp(char *dir, size_t n, const char *tag) {
    snprintf(dir, n, "/tmp/pc-test-%s-XXXXXX", tag);
    return mkdtemp(dir) ? 0 : -1;
}

/* rm -rf dir; 0 on success. */
static inline int test_rmtree(const char *dir) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

#endif
